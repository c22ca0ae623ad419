{{/*
The labels Helm's conventions add to every object's metadata (not to pod
templates or selectors, which stay those of deploy/kubernetes: a selector is
immutable, so a DaemonSet applied with kubectl can be taken over by a release
with helm install --take-ownership).
*/}}
{{- define "hostpath-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* An image reference: repository:tag. */}}
{{- define "hostpath-csi.image" -}}
{{- $repo := required "every image needs a repository" .repository }}
{{- printf "%s:%s" $repo (toString (required (printf "image %s needs a tag" $repo) .tag)) }}
{{- end }}

{{/* The flavour, checked: singleNode, distributed or nfs. */}}
{{- define "hostpath-csi.flavour" -}}
{{- $f := .Values.flavour }}
{{- if not (has $f (list "singleNode" "distributed" "nfs")) }}
{{- fail (printf "flavour %q: it is singleNode, distributed or nfs (the overlays of deploy/kubernetes)" (toString $f)) }}
{{- end }}
{{- $f }}
{{- end }}

{{/* The driver name of the flavour: it names who owns the volumes, so it is no value. */}}
{{- define "hostpath-csi.driverName" -}}
{{- if eq (include "hostpath-csi.flavour" .) "nfs" }}nfs.hostpath-csi.github.io{{ else }}hostpath-csi.github.io{{ end }}
{{- end }}

{{/* The values of the flavour: .Values.hostpath or .Values.nfs. */}}
{{- define "hostpath-csi.flavourValuesName" -}}
{{- if eq (include "hostpath-csi.flavour" .) "nfs" }}nfs{{ else }}hostpath{{ end }}
{{- end }}

{{/*
hostpath-csi.default: the name of the class marked default, checked to be
one of the list, whose classes must have names. Called with
(dict "list" LIST "name" NAME "what" VALUE-NAME "kind" KIND-OF-CLASS).
*/}}
{{- define "hostpath-csi.default" -}}
{{- $names := list }}
{{- range .list }}{{ $names = append $names (required (printf "every %s needs a name" $.kind) .name) }}{{ end }}
{{- if and .name (not (has .name $names)) }}
{{- fail (printf "%s %q is not one of the classes listed (%s)" .what .name (join ", " $names)) }}
{{- end }}
{{- .name }}
{{- end }}
