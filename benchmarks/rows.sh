# Sourced by sd15.sh and sdxl.sh after they set ROWS: checks the row names given on their command line
# (none: every row), then `row NAME MODULE ARGS...` runs `python -m MODULE ARGS --record` for a wanted
# row, reporting a failing one and going on; `finish` exits 1 if any failed.
PY=${PYTHON:-.venv/bin/python}
for name in "$@"; do
  [[ " ${ROWS[*]} " == *" $name "* ]] || { echo "unknown row '$name'; rows: ${ROWS[*]}" >&2; exit 2; }
done
wanted=("$@")
failed=()
row() {
  local name=$1; shift
  ((${#wanted[@]} == 0)) || [[ " ${wanted[*]} " == *" $name "* ]] || return 0
  echo "+ [$name] $*" >&2; "$PY" -m "$@" --record || failed+=("$name")
}
finish() {
  if ((${#failed[@]})); then printf 'FAILED: %s\n' "${failed[@]}" >&2; exit 1; fi
}
