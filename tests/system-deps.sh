#!/usr/bin/env bash
# The system tools a make target runs outside the venv: installed with apt when this user may
# (root, or sudo without a password), otherwise one line naming the packages and the command.
#
# Usage: tests/system-deps.sh TARGET CHECK=PACKAGE...
#   CHECK is a command that must be on PATH, or py:MODULE, a module $PYTHON must be able to import.
set -euo pipefail

target=$1
shift
python=${PYTHON:-python3}

present() {
    if [[ $1 == py:* ]]; then
        "$python" -c "import ${1#py:}" >/dev/null 2>&1
    else
        command -v "$1" >/dev/null
    fi
}

missing() {
    local pair
    for pair in "$@"; do
        present "${pair%%=*}" || printf '%s\n' "${pair#*=}"
    done
}

stop() {
    echo "make $target: $1" >&2
    exit 1
}

mapfile -t packages < <(missing "$@")
((${#packages[@]})) || exit 0
install="sudo apt-get install ${packages[*]}"

command -v apt-get >/dev/null ||
    stop "missing ${packages[*]} (Debian/Ubuntu package names); install them with your package manager"
if [[ $(id -u) == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    stop "missing ${packages[*]} and sudo needs a password; install them with: $install"
fi

echo "make $target: installing ${packages[*]} with apt-get" >&2
# apt and dpkg print a hundred lines even with -qq: keep them in a log, shown only by path on failure.
log=$(mktemp -t kube-on-air-apt.XXXXXX)
# A fresh machine has no package lists yet; its boot-time upgrades may hold the apt lock for a while.
apt=(env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
if ! { "${as_root[@]}" "${apt[@]}" update &&
    "${as_root[@]}" "${apt[@]}" install -y --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    stop "apt-get could not install ${packages[*]} (its output: $log); install them with: $install"
fi
rm -f "$log"

mapfile -t packages < <(missing "$@")
((${#packages[@]} == 0)) || stop "still missing ${packages[*]} after apt-get install"
