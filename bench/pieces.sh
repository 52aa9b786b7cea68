# Sourced by the bench/gpu_*.sh scripts whose payload is larger than one run() call may carry (64 MiB, the
# checkout included): the payload travels as one tar stream cut into pieces, one piece carried per call, and
# the pieces wait under the GPU machine's /root/stage (kept while it stays warm) until the last call joins them.

# pieces_cut SIZE PREFIX TAR_ARGS...: `tar cf - TAR_ARGS...` cut into PREFIX00, PREFIX01, ... of SIZE (split -b)
pieces_cut() {
    local size=$1 prefix=$2
    shift 2
    tar cf - "$@" | split -b "$size" -d -a 2 - "$prefix"
}

# pieces_keep CARRIED_DIR KEPT_DIR: copy this call's piece(s) beside those earlier calls left, and list them
pieces_keep() {
    mkdir -p "$2"
    local piece
    for piece in "$1"/p*; do
        if [[ -f $piece ]]; then cp "$piece" "$2/"; fi
    done
    echo "pieces here: $(ls "$2" | tr '\n' ' ')"
}

# pieces_join KEPT_DIR TARGET: the pieces, in order, unpacked into TARGET
pieces_join() {
    mkdir -p "$2"
    cat "$1"/p* | tar xf - -C "$2"
}
