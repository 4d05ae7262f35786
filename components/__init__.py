"""kube-on-air: Pulumi components that turn one libvirt host into a kubeadm cluster."""
