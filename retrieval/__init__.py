"""Query and document encoders: SPLADE (MLM and decoder backbones), dense bi-encoders, fusion."""
