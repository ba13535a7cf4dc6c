{{- define "infernetes.name" -}}infernetes{{- end -}}

{{- define "infernetes.fullname" -}}
{{- if contains "infernetes" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-infernetes" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "infernetes.labels" -}}
app.kubernetes.io/name: infernetes
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "infernetes.selector" -}}
app.kubernetes.io/name: infernetes
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "infernetes.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "infernetes.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "infernetes.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* The namespaces the operator watches: the listed ones, else the release namespace. */}}
{{- define "infernetes.namespaces" -}}
{{- if .Values.watchNamespaces -}}{{ join "," .Values.watchNamespaces }}{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{/* The namespace whose endpoints the REST gateway serves: gateway.namespace, else the first watched
     namespace, else the release namespace. It must be one the operator watches. */}}
{{- define "infernetes.gatewayNamespace" -}}
{{- $ns := .Release.Namespace -}}
{{- if .Values.gateway.namespace -}}{{- $ns = .Values.gateway.namespace -}}
{{- else if and .Values.watchNamespaces (not .Values.clusterWide) -}}{{- $ns = first .Values.watchNamespaces -}}
{{- end -}}
{{- if and (not .Values.clusterWide) (not (has $ns (splitList "," (include "infernetes.namespaces" .)))) -}}
{{- fail (printf "gateway.namespace [%s] is not watched: add it to watchNamespaces [%s]" $ns (include "infernetes.namespaces" .)) -}}
{{- end -}}
{{ $ns }}
{{- end -}}

{{- define "infernetes.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "infernetes.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "infernetes.modelCacheClaim" -}}
{{- $pvc := .Values.modelCache.persistentVolumeClaim -}}
{{- if $pvc.enabled -}}{{ default (printf "%s-models" (include "infernetes.fullname" .)) $pvc.existingClaim }}{{- end -}}
{{- end -}}

{{/* The Secret (key `token`) holding the credential workers demand from the gateway; empty when off. */}}
{{- define "infernetes.workerCredentialSecret" -}}
{{- if and .Values.workers.credential.enabled (not .Values.clusterWide) -}}
{{- default (printf "%s-worker-credential" (include "infernetes.fullname" .)) .Values.workers.credential.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The gateway's pods: its Deployment's selector, the Service's, the PDB's and the NetworkPolicies'. */}}
{{- define "infernetes.gatewaySelector" -}}
app.kubernetes.io/name: infernetes
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "infernetes.gatewayName" -}}
{{- printf "%s-gateway" (include "infernetes.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
