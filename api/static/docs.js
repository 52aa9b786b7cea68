// Lists the operations of /openapi.json (no third-party code: the page must work offline).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function schemaOf(spec, ref) {
  return ref && ref.$ref ? spec.components.schemas[ref.$ref.split("/").pop()] : ref;
}

async function render() {
  const ops = document.getElementById("ops");
  const spec = await (await fetch("/openapi.json")).json();
  ops.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("div", undefined, "op");
      const head = el("div");
      head.append(el("span", method.toUpperCase(), "method"), el("code", path));
      const keyed = (op.security || []).length && !(op.security || []).some((s) => !Object.keys(s).length);
      head.append(el("span", keyed ? "  · needs the API key" : (op.security ? "  · key optional" : "")));
      box.append(head, el("div", op.summary || op.description || ""));
      const body = op.requestBody && schemaOf(spec, op.requestBody.content["application/json"].schema);
      if (body) box.append(el("pre", JSON.stringify(body.properties || body, null, 1)));
      box.append(el("div", "responses: " + Object.keys(op.responses).join(", ")));
      ops.append(box);
    }
  }
}

render().catch((err) => {
  document.getElementById("ops").textContent = "could not load /openapi.json: " + err;
});
