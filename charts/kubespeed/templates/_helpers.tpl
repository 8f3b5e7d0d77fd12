{{/*
Names and labels shared by every object of the chart.

The objects carry no Helm-only labels (helm.sh/chart, managed-by Helm): the
default render is the kustomize base in manifests/, and Helm adds its own
ownership metadata when it installs.
*/}}

{{/* <release>-operator: the Deployment, ServiceAccount, RBAC and Service. */}}
{{- define "kubespeed.operatorName" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubespeed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubespeed.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Labels of every object, and the operator pod's selector. A job's NetworkPolicy admits
metrics scrapes from pods with app.kubernetes.io/name=kubespeed and
app.kubernetes.io/component=operator (kubespeed/wiring.py), so neither is a value.
There is no instance label: the operators of two releases in one namespace would
share the leader-election Lease `kubespeed-operator`, so a namespace holds one release.
*/}}
{{- define "kubespeed.labels" -}}
app.kubernetes.io/name: kubespeed
app.kubernetes.io/component: operator
{{- end -}}

{{/* The namespaces a namespaced operator watches: `watch.namespaces`, or the release namespace. */}}
{{- define "kubespeed.watchNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- join "," .Values.watch.namespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* A scraper of `metrics.trainers.scrapers` as `kubespeed operator --metrics-scraper` takes it: NAMESPACE:KEY=VALUE,... */}}
{{- define "kubespeed.scraper" -}}
{{- $pairs := list -}}
{{- range $key, $value := .podLabels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- printf "%s:%s" .namespace (join "," $pairs) -}}
{{- end -}}
