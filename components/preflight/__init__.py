"""The host preflight: what is read from this machine and libvirt, and the judgement before any resource."""
