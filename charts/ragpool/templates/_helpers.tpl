{{/* Names, labels and the pieces every pod shares. */}}

{{- define "ragpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name, plus the chart name unless the
release name already holds it. Kept short so "<prefix>-operator-secrets" fits 63 chars. */}}
{{- define "ragpool.fullname" -}}
{{- $name := include "ragpool.fullnameUnchecked" . -}}
{{- if not (regexMatch "^[a-z]" $name) -}}
{{- fail (printf "resource names start with %q, but Service names must start with a letter: choose another release name or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "ragpool.fullnameUnchecked" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ragpool.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; "component" selects api, operator or redis. */}}
{{- define "ragpool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ragpool
{{ include "ragpool.selectorLabels" . }}
{{- end -}}

{{- define "ragpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragpool.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The labels the operator puts on every executor pod it creates. */}}
{{- define "ragpool.executorSelector" -}}
app.kubernetes.io/name: ragpool-executor
{{- end -}}

{{- define "ragpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod-level security settings of every ragpool pod (the image's nonroot user). */}}
{{- define "ragpool.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 65532 }}
runAsGroup: {{ .uid | default 65532 }}
fsGroup: {{ .uid | default 65532 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ragpool.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "ragpool.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "ragpool.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A probe on a component's own HTTP endpoint. */}}
{{- define "ragpool.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .period }}
timeoutSeconds: 2
failureThreshold: 3
{{- end -}}

{{/* The host names the API answers with auth off: its Service's names, the ingress host and
api.allowedHosts, comma-separated. */}}
{{- define "ragpool.apiHostNames" -}}
{{- $api := .Values.api -}}
{{- $svc := printf "%s-api" (include "ragpool.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $api.clusterDomain) -}}
{{- if $api.ingress.enabled }}{{- $names = append $names $api.ingress.host -}}{{- end -}}
{{- join "," (concat $names $api.allowedHosts) -}}
{{- end -}}

{{/* Redis: the bundled one's Service and password Secret names. */}}
{{- define "ragpool.redisName" -}}
{{- printf "%s-redis" (include "ragpool.fullname" .) -}}
{{- end -}}

{{- define "ragpool.redisPasswordSecret" -}}
{{- .Values.redis.bundled.existingPasswordSecret | default (include "ragpool.redisName" .) -}}
{{- end -}}

{{/* The Redis URL without a password: the bundled Redis's fully qualified Service (pools in
other namespaces can use it too), or redis.url with redis.tls applied. Empty when the URL
comes from redis.existingSecret. */}}
{{- define "ragpool.redisUrl" -}}
{{- $sentinel := .Values.redis.sentinel | default dict -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "redis://%s.%s.svc:6379" (include "ragpool.redisName" .) .Release.Namespace -}}
{{- else if $sentinel.enabled -}}
{{- printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" .Values.redis.tls) (join "," $sentinel.addresses) $sentinel.masterName (int ($sentinel.db | default 0)) -}}
{{- else if .Values.redis.url -}}
{{- if .Values.redis.tls -}}
{{- regexReplaceAll "^redis://" .Values.redis.url "rediss://" -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The password Secret and key of the Redis, if it has one. */}}
{{- define "ragpool.redisPasswordRef" -}}
{{- if .Values.redis.bundled.enabled -}}
name: {{ include "ragpool.redisPasswordSecret" . }}
key: {{ .Values.redis.bundled.passwordKey }}
{{- else if .Values.redis.passwordSecret -}}
name: {{ .Values.redis.passwordSecret }}
key: {{ .Values.redis.passwordSecretKey }}
{{- end -}}
{{- end -}}

{{/* Environment of a container that talks to Redis. The password goes into the URL through
Kubernetes' $(VAR) expansion, so it never appears in a manifest. */}}
{{- define "ragpool.redisEnv" -}}
{{- $password := include "ragpool.redisPasswordRef" . -}}
{{- if $password }}
- name: RAGPOOL_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- $password | nindent 6 }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: RAGPOOL_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
{{- $url := include "ragpool.redisUrl" . }}
{{- if $password }}
{{- if regexMatch "^[a-z+]+://[^/]*@" $url }}
{{- fail "redis.url already holds credentials: drop redis.passwordSecret or put the whole URL in redis.existingSecret" }}
{{- end }}
{{- $url = regexReplaceAll "^([a-z+]+)://" $url "${1}://:$$(RAGPOOL_REDIS_PASSWORD)@" }}
{{- end }}
{{- $sentinel := .Values.redis.sentinel | default dict }}
{{- if and $sentinel.enabled $sentinel.noPassword }}
{{- $url = printf "%s?sentinel_password=" $url }}
{{- else if and $sentinel.enabled $sentinel.passwordSecret }}
- name: RAGPOOL_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sentinel.passwordSecret }}
      key: {{ $sentinel.passwordSecretKey }}
{{- $url = printf "%s?sentinel_password=$(RAGPOOL_REDIS_SENTINEL_PASSWORD)" $url }}
{{- end }}
- name: RAGPOOL_REDIS_URL
  value: {{ $url | quote }}
{{- end }}
{{- if eq (.Values.redis.durability | default "local") "replicated" }}
- name: RAGPOOL_DURABILITY
  value: replicated
{{- end }}
{{- include "ragpool.partitionsEnv" . }}
{{- if ne (.Values.redis.keyPrefix | default "ragpool") "ragpool" }}
- name: RAGPOOL_KEY_PREFIX
  value: {{ .Values.redis.keyPrefix | quote }}
{{- end }}
{{- end -}}

{{/* RAGPOOL_PARTITIONS when redis.partitions is set (unset: every process's `auto`). */}}
{{- define "ragpool.partitionsEnv" -}}
{{- if not (kindIs "invalid" .Values.redis.partitions) }}
- name: RAGPOOL_PARTITIONS
  value: {{ int .Values.redis.partitions | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every ragpool pod gets: a scratch /tmp on a read-only root filesystem. */}}
{{- define "ragpool.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "ragpool.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
The OpenTelemetry variables of a component (dict "root" . "service" NAME): nothing while
traces.endpoint is empty.
*/}}
{{- define "ragpool.tracesEnv" -}}
{{- $traces := .root.Values.traces | default dict -}}
{{- with $traces.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.service | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $traces.sampler | default "parentbased_traceidratio" | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $traces.samplerArg | default "1.0" | quote }}
{{- end }}
{{- end }}
