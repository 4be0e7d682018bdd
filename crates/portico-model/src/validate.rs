//! Validation of Ingresses as kube-apiserver does it.
