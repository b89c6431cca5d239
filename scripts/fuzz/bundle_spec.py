#!/usr/bin/env python3
"""Bundles the Matrix spec's Client-Server OpenAPI files into one self-contained document.

The spec keeps one OpenAPI file per area (data/api/client-server/*.yaml), each with its own
base path in `servers`, and $refs into definitions/ and event schemas. Schemathesis wants one
document, so this script inlines every $ref (relative files and JSON pointers), prefixes each
path with its file's base path, and writes JSON.

Usage: bundle_spec.py SPEC_DIR OUTPUT.json
"""

import copy
import json
import os
import sys

import yaml

_files = {}


def load(path):
    path = os.path.normpath(path)
    if path not in _files:
        with open(path, encoding="utf-8") as f:
            _files[path] = yaml.safe_load(f)
    return _files[path]


def pointer(doc, fragment):
    node = doc
    for part in [p for p in fragment.lstrip("/").split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve(node, base, stack):
    """Returns `node` with every $ref inlined; `base` is the file the node comes from."""
    if isinstance(node, list):
        return [resolve(n, base, stack) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and isinstance(node["$ref"], str):
        ref = node["$ref"]
        file_part, _, fragment = ref.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(base), file_part)) if file_part else base
        key = (target, fragment)
        if key in stack:
            # A recursive schema: stop here with "any value", which is all a fuzzer needs.
            return {}
        target_node = pointer(load(target), fragment)
        resolved = resolve(copy.deepcopy(target_node), target, stack | {key})
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if siblings and isinstance(resolved, dict):
            merged = dict(resolved)
            merged.update(resolve(siblings, base, stack))
            return merged
        return resolved
    return {k: resolve(v, base, stack) for k, v in node.items()}


def base_path(doc):
    for server in doc.get("servers", []):
        default = server.get("variables", {}).get("basePath", {}).get("default")
        if default is not None:
            return default.rstrip("/")
    return ""


def main():
    spec_dir, output = sys.argv[1], sys.argv[2]
    bundle = {
        "openapi": "3.1.0",
        "info": {"title": "Matrix Client-Server API (bundled)", "version": "1.0.0"},
        "paths": {},
        "components": {"securitySchemes": {}},
    }
    for name in sorted(os.listdir(spec_dir)):
        if not name.endswith(".yaml"):
            continue
        path = os.path.join(spec_dir, name)
        doc = load(path)
        if not isinstance(doc, dict) or "paths" not in doc:
            continue
        prefix = base_path(doc)
        schemes = resolve(doc.get("components", {}).get("securitySchemes", {}), path, frozenset())
        bundle["components"]["securitySchemes"].update(schemes)
        for route, item in (doc.get("paths") or {}).items():
            bundle["paths"][prefix + route] = resolve(item, path, frozenset())
    with open(output, "w", encoding="utf-8") as f:
        json.dump(bundle, f, indent=1)
    print(f"bundled {len(bundle['paths'])} paths into {output}", file=sys.stderr)


if __name__ == "__main__":
    main()
