{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, overridable; cut to 63 characters (the DNS label limit). */}}
{{- define "h2ogpt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: "<release>-<chart>", or just the release name when it already
contains the chart name; cut to 63 characters.
*/}}
{{- define "h2ogpt-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "h2ogpt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them (selectors are immutable). */}}
{{- define "h2ogpt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "h2ogpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels every resource of the release carries, whatever its component. */}}
{{- define "h2ogpt-operator.releaseLabels" -}}
helm.sh/chart: {{ include "h2ogpt-operator.chart" . }}
app.kubernetes.io/name: {{ include "h2ogpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: h2ogpt-platform
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the operator's own resources. */}}
{{- define "h2ogpt-operator.labels" -}}
{{ include "h2ogpt-operator.releaseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* commonAnnotations as a metadata block, or nothing. */}}
{{- define "h2ogpt-operator.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "h2ogpt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "h2ogpt-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "h2ogpt-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespace an optional integration lands in: its own setting, else the release's. */}}
{{- define "h2ogpt-operator.namespaceOr" -}}
{{- default .root.Release.Namespace .namespace }}
{{- end }}

{{/*
The RBAC rules the operator needs in every namespace it watches: exactly the resources and
verbs its reconcile loop uses (see docs/helm.md, "RBAC"). Used by the ClusterRole when it
watches all namespaces and by one Role per namespace otherwise.
*/}}
{{- define "h2ogpt-operator.watchRules" -}}
# Exactly the requests the operator makes, measured from the apiserver's audit log by
# tests/cluster/test_rbac_least_privilege.py (docs/security.md): a verb is added here only
# with a test that uses it. Children are written by server-side apply: a `patch` request,
# for which the apiserver also checks `create` when the object does not exist yet.
- apiGroups: ["h2ogpt.dev"]
  resources: ["h2ogptdeployments"]
  verbs: ["list", "watch"]
- apiGroups: ["h2ogpt.dev"]
  resources: ["h2ogptdeployments/status"]
  verbs: ["patch"]
# Setting blockOwnerDeletion on children's ownerReferences needs this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift; the tests' apiserver).
- apiGroups: ["h2ogpt.dev"]
  resources: ["h2ogptdeployments/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch"]
# get: only when creating the generated auth Secret finds it exists before the watch shows it
# (an operator restarted mid-create).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# patch: the autoscaler gives idle inference pods the lowest pod-deletion-cost before a scale-in
# (stacks with autoscaling only), so that a pod streaming an answer is not the one removed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# The autoscaler reads the API pods' /metrics through the apiserver (stacks with autoscaling only).
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Watched like every child (kopf serves it once the Prometheus Operator's CRD exists).
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# A stack with several inference replicas gives its api pods a ServiceAccount, a Role and a
# RoleBinding `<cr>-api` (their EndpointSlice watch); watched and pruned like every child.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# A stack its autoscaling can grow gets a demand Lease `<cr>-demand`, which its api pods renew when
# they hold a request or pass targetInFlight (their Role may patch that one name); the operator's
# watch on it wakes the autoscaler. `patch` is also what lets the operator grant the api pods theirs.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Held only to be granted: Kubernetes lets a Role (and its binding) be written only by someone who
# holds its rules. Holding these three read verbs is the least privilege that allows it; `escalate`
# or `bind` instead would let a stolen operator token write or bind Roles with any rule.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* The cluster-scoped rule: the operator reads the CRDs to learn whether ServiceMonitor exists. */}}
{{- define "h2ogpt-operator.clusterScopedRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# At start the operator server-side applies its own CRD (Helm never upgrades crds/): a patch of
# that one CRD, by name. No create: `helm install` creates it from crds/.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["h2ogptdeployments.h2ogpt.dev"]
  verbs: ["patch"]
{{- end }}
