"""modelpilot's local cluster and end-to-end suites.

The local cluster is a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler) built from Go modules and started on
127.0.0.1, with a node agent that runs pods as local processes.
"""
