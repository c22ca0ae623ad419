#!/usr/bin/env bash
# Make hostpath-csi the cluster's one default StorageClass, or give the
# default back to the classes it was taken from. The overlays already mark
# the hostpath-csi class default; kind (standard), minikube (standard) and
# k3s (local-path) mark their own class default too, and a claim that names
# no class then gets whichever default class is newest.
#
#   deploy/kubernetes/default-class.sh take       # after kubectl apply -k ...
#   deploy/kubernetes/default-class.sh give-back  # before or after the uninstall
#
# take: every other class marked default loses the mark (its annotation
# storageclass.kubernetes.io/is-default-class becomes "false") and gets the
# label hostpath-csi.github.io/was-default=true, so that give-back finds it;
# hostpath-csi is marked default. give-back: each labelled class is marked
# default again and loses the label, and hostpath-csi, if it is still there
# and a class got the mark back, is no longer marked. Both say what they
# change, and running either twice changes nothing the second time.
# HOSTPATH_CSI_CLASS names another class of ours (default hostpath-csi).
set -euo pipefail
ours=${HOSTPATH_CSI_CLASS:-hostpath-csi}
mark=storageclass.kubernetes.io/is-default-class
label=hostpath-csi.github.io/was-default

case "${1:-}" in
take)
	kubectl get storageclass "$ours" -o name >/dev/null # installed first
	defaults=$(kubectl get storageclass -o jsonpath='{range .items[?(@.metadata.annotations.storageclass\.kubernetes\.io/is-default-class=="true")]}{.metadata.name}{"\n"}{end}')
	for class in $defaults; do
		[ "$class" = "$ours" ] && continue
		kubectl label storageclass "$class" "$label=true" --overwrite
		kubectl annotate storageclass "$class" "$mark=false" --overwrite
	done
	kubectl annotate storageclass "$ours" "$mark=true" --overwrite
	;;
give-back)
	taken=$(kubectl get storageclass -l "$label=true" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
	for class in $taken; do
		kubectl annotate storageclass "$class" "$mark=true" --overwrite
		kubectl label storageclass "$class" "$label-"
	done
	if [ -n "$taken" ] && kubectl get storageclass "$ours" -o name >/dev/null 2>&1; then
		kubectl annotate storageclass "$ours" "$mark=false" --overwrite
	fi
	;;
*)
	echo "usage: $0 take|give-back" >&2
	exit 2
	;;
esac
