//! Lodger's real-cluster end-to-end suite (needs KUBECONFIG and LODGER_IMAGE)
