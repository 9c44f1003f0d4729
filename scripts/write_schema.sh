#!/usr/bin/env bash
# Regenerate the policy file's JSON Schema shipped in the package (editors read it through the
# `# yaml-language-server: $schema=...` line of the example policies). Run it after changing
# rolegate/policy/schema.py; tests/policy/test_schema_file.py fails until you do.
#   bash scripts/write_schema.sh            # with .venv/bin/python
#   PYTHON=python3 bash scripts/write_schema.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out=src/rolegate/policy/policy.schema.json
trap 'rm -f "$out.tmp"' EXIT
"$python" -m rolegate policy schema > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
