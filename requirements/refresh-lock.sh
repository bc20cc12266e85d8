#!/usr/bin/env bash
# Refresh the lock files: the set of packages that pyproject.toml allows, resolved by
# `uv pip compile` for one platform (Linux x86_64, manylinux_2_28, CPython 3.11: CI's), every
# version pinned. As pip-compile does, the pins already in a lock are kept while pyproject still
# allows them (a new dependency is added, a moved range re-resolved); `--upgrade` takes the newest
# of everything, `--upgrade-package NAME` of one. Run the suite on a new set before committing it:
#   python -m venv VENV && . VENV/bin/activate
#   pip install -e ".[dev]" -c requirements/lock.txt && pytest
# Needs uv (in the dev extra). Arguments go to every `uv pip compile`.
set -euo pipefail
cd "$(dirname "$0")/.."
PLATFORM=x86_64-manylinux_2_28
PYTHON_VERSION=3.11
ARGS=("$@")

# The caps pip obeys on this machine (PIP_CONSTRAINT, `constraint` in a pip.conf): an index may
# hold only some releases (e.g. torch up to the one it mirrors), and the lock must install from
# it. uv does not read pip's configuration, so they are passed on, and named in the header.
cap_files=()
while IFS= read -r line; do
    value=${line#*=}
    for file in ${value//\'/}; do [ -f "$file" ] && cap_files+=("$file"); done
done < <(python -m pip config list 2>/dev/null | grep -E '^[^=]*\.constraint=' || true)
caps=() capped=""
for file in "${cap_files[@]}"; do
    caps+=(--constraint "$file")
    capped+=" $(grep -v '^\s*#' "$file" | xargs)"
done

# lock EXTRAS OUTPUT [UV ARGS...]: the project with these extras (comma-separated) resolved and
# pinned into OUTPUT; arguments after OUTPUT go to this lock's resolve only. One line per lock.
lock() {
    local extras=$1 out=$2
    shift 2
    local flags=() tmp pins
    for extra in ${extras//,/ }; do flags+=(--extra "$extra"); done
    tmp=$(mktemp) pins=$(mktemp)
    [ -f "$out" ] && cp "$out" "$pins"  # uv keeps the versions pinned in its output file
    python -m uv pip compile pyproject.toml "${flags[@]}" --python-platform "$PLATFORM" \
        --python-version "$PYTHON_VERSION" --no-header --quiet "${caps[@]}" "${ARGS[@]}" "$@" -o "$pins"
    {
        echo "# docclassify[$extras] with every package pinned: the set the suite was run with."
        echo "# Platform: Linux x86_64 ($PLATFORM), CPython $PYTHON_VERSION; index: uv's default (PyPI)${capped:+, capped as pip is here:$capped}."
        echo "# Made by requirements/refresh-lock.sh ($(python -m uv --version), $(date -u +%F)), i.e."
        echo "#   uv pip compile pyproject.toml ${flags[*]} --python-platform $PLATFORM --python-version $PYTHON_VERSION${ARGS[*]:+ ${ARGS[*]}}${*:+ $*}"
        echo "# Install exactly this set (constraints: pip installs only what the project needs of it):"
        echo "#   pip install -e \".[$extras]\" -c $out"
        local text
        text=$(grep -v '^#' "$pins")  # (the header of the lock it started from)
        for file in "${cap_files[@]}"; do text=${text//"$file"/pip-constraints}; done  # no machine paths
        printf '%s\n' "$text"
    } >"$tmp"
    rm -f "$pins"
    mv "$tmp" "$out"
    echo "wrote $out ($(grep -c '==' "$out") packages)"
}

lock dev requirements/lock.txt
lock dev,optuna5 requirements/lock-optuna5.txt
