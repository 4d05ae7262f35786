#!/bin/bash
# Stand-in for kubeadm on the test node (the real one cannot be downloaded here). It records every
# call and makes the file changes the program's remote scripts test for, so those scripts run for
# real, twice, on the booted node.
set -euo pipefail
state=/var/lib/stand-in-kubeadm
mkdir -p "${state}" /etc/kubernetes
printf '%s\n' "$*" >> "${state}/calls"
config_argument() {
  [[ "${1:-}" == --config && -r "${2:-}" ]] || { echo "stand-in kubeadm: expected --config <readable file>, got: $*" >&2; exit 2; }
}
case "${1:-}" in
  init)
    config_argument "${@:2}"
    cp "$3" "${state}/init-config.yaml"
    echo "stand-in admin kubeconfig" > /etc/kubernetes/admin.conf ;;
  join)
    config_argument "${@:2}"
    cp "$3" "${state}/join-config.yaml"
    echo "stand-in kubelet kubeconfig" > /etc/kubernetes/kubelet.conf ;;
  token)
    [[ "${2:-}" == create ]] || exit 2
    echo "stndin.0123456789abcdef" ;;
  reset)
    rm -f /etc/kubernetes/admin.conf /etc/kubernetes/kubelet.conf ;;
  *)
    echo "stand-in kubeadm: unexpected call: $*" >&2
    exit 2 ;;
esac
