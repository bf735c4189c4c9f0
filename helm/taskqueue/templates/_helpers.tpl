{{/* Names and labels, as `helm create` makes them, plus the chart's shared pieces. */}}

{{- define "taskqueue.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (DNS label limit); the release name is used
as is when it already contains the chart name.
*/}}
{{- define "taskqueue.fullname" -}}
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

{{- define "taskqueue.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "taskqueue.labels" -}}
helm.sh/chart: {{ include "taskqueue.chart" . }}
{{ include "taskqueue.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "taskqueue.name" . }}
{{- end }}

{{/* Selector labels. */}}
{{- define "taskqueue.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskqueue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: include with (dict "ctx" $ "component" "worker"). */}}
{{- define "taskqueue.componentLabels" -}}
{{ include "taskqueue.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "taskqueue.componentSelectorLabels" -}}
{{ include "taskqueue.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of one component's objects: <fullname>-<component>, within 63 characters. */}}
{{- define "taskqueue.componentName" -}}
{{- printf "%s-%s" (include "taskqueue.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" }}
{{- end }}

{{/* A taskqueue image: [registry/]repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "taskqueue.image" -}}
{{- $repo := .repository }}
{{- with .ctx.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .ctx.Values.image.tag) }}
{{- end }}

{{/* -- Redis ----------------------------------------------------------------------------------- */}}

{{- define "taskqueue.redis.fullname" -}}
{{- include "taskqueue.componentName" (dict "ctx" . "component" "redis") }}
{{- end }}

{{- define "taskqueue.redis.headless" -}}
{{- printf "%s-headless" (include "taskqueue.redis.fullname" . | trunc 54) }}
{{- end }}

{{/* host:port of Redis, the same for the apps (in the URL) and the KEDA trigger (address). */}}
{{- define "taskqueue.redis.address" -}}
{{- if .Values.externalRedis.enabled }}
{{- $u := urlParse .Values.externalRedis.url }}
{{- if contains ":" $u.host }}{{ $u.host }}{{ else }}{{ printf "%s:6379" $u.host }}{{ end }}
{{- else }}
{{- printf "%s.%s.svc.%s:%d" (include "taskqueue.redis.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) }}
{{- end }}
{{- end }}

{{/* Database index in the Redis URL. */}}
{{- define "taskqueue.redis.database" -}}
{{- if .Values.externalRedis.enabled }}
{{- $path := trimPrefix "/" (urlParse .Values.externalRedis.url).path }}
{{- default "0" $path }}
{{- else }}
{{- .Values.redis.database }}
{{- end }}
{{- end }}

{{- define "taskqueue.redis.tls" -}}
{{- if and .Values.externalRedis.enabled (hasPrefix "rediss://" .Values.externalRedis.url) }}true{{ end }}
{{- end }}

{{- define "taskqueue.redis.url" -}}
{{- if .Values.externalRedis.enabled }}
{{- .Values.externalRedis.url }}
{{- else }}
{{- printf "redis://%s/%s" (include "taskqueue.redis.address" .) (include "taskqueue.redis.database" .) }}
{{- end }}
{{- end }}

{{/* The Secret with the Redis users' passwords; empty name: no password. */}}
{{- define "taskqueue.redis.secretName" -}}
{{- if .Values.externalRedis.enabled }}
{{- .Values.externalRedis.existingSecret }}
{{- else }}
{{- default (include "taskqueue.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- end }}
{{- end }}

{{/* The Redis users of the chart's Redis (files/redis-users.acl), but "default", which is off: one a
     component (generator, worker, exporter), keda (the redis-list trigger) and admin (operators, probes). */}}
{{- define "taskqueue.redis.users" -}}
{{- $users := list }}
{{- range .Files.Lines "files/redis-users.acl" }}
{{- if hasPrefix "user " . }}
{{- $name := index (splitList " " .) 1 }}
{{- if ne $name "default" }}{{ $users = append $users $name }}{{ end }}
{{- end }}
{{- end }}
{{- join "," $users }}
{{- end }}

{{/* The Redis user a component logs in as (dict "ctx" $ "component" "worker"); empty: Redis's default. */}}
{{- define "taskqueue.redis.username" -}}
{{- if .ctx.Values.externalRedis.enabled }}
{{- (index .ctx.Values.externalRedis.users .component).username }}
{{- else }}
{{- .component }}
{{- end }}
{{- end }}

{{/* The key of a component's Redis password in the Secret (dict "ctx" $ "component" "worker"). */}}
{{- define "taskqueue.redis.secretKey" -}}
{{- if .ctx.Values.externalRedis.enabled }}
{{- default .ctx.Values.externalRedis.passwordKey (index .ctx.Values.externalRedis.users .component).passwordKey }}
{{- else }}
{{- printf "%s-password" .component }}
{{- end }}
{{- end }}

{{/* Where the external Redis CA bundle is mounted. */}}
{{- define "taskqueue.redis.caDir" -}}/etc/taskqueue/redis-ca{{- end }}

{{- define "taskqueue.redis.hasCA" -}}
{{- if and .Values.externalRedis.enabled (or .Values.externalRedis.tls.caSecret .Values.externalRedis.tls.caConfigMap) }}true{{ end }}
{{- end }}

{{/* "true" when the processes find Redis's primary through Sentinel: the chart's sentinel mode
     (redis.mode=sentinel), or an external Redis with sentinels (externalRedis.sentinel.addresses). */}}
{{- define "taskqueue.redis.sentinel" -}}
{{- if .Values.externalRedis.enabled }}
{{- if .Values.externalRedis.sentinel.addresses }}true{{ end }}
{{- else if eq .Values.redis.mode "sentinel" }}true{{ end }}
{{- end }}

{{/* The DNS name of the chart's Redis pod number i (dict "ctx" $ "i" 0), through the headless Service. */}}
{{- define "taskqueue.redis.podHost" -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "taskqueue.redis.fullname" .ctx) (int .i) (include "taskqueue.redis.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/* The sentinels' host:port, comma-separated: the chart's three pods', or externalRedis.sentinel.addresses. */}}
{{- define "taskqueue.redis.sentinels" -}}
{{- if .Values.externalRedis.enabled }}
{{- join "," .Values.externalRedis.sentinel.addresses }}
{{- else }}
{{- $all := list }}
{{- range $i := until 3 }}
{{- $all = append $all (printf "%s:%d" (include "taskqueue.redis.podHost" (dict "ctx" $ "i" $i)) (int $.Values.redis.sentinel.port)) }}
{{- end }}
{{- join "," $all }}
{{- end }}
{{- end }}

{{- define "taskqueue.redis.masterName" -}}
{{- if .Values.externalRedis.enabled }}
{{- required "externalRedis.sentinel.masterName: the name the sentinels know the primary by" .Values.externalRedis.sentinel.masterName }}
{{- else }}
{{- .Values.redis.sentinel.masterName }}
{{- end }}
{{- end }}

{{/* The key of the sentinels' own password in the Redis Secret; empty: they ask none. */}}
{{- define "taskqueue.redis.sentinelSecretKey" -}}
{{- if .Values.externalRedis.enabled }}{{ .Values.externalRedis.sentinel.passwordKey }}{{ else }}sentinel-requirepass{{ end }}
{{- end }}

{{- define "taskqueue.redis.sentinelUsername" -}}
{{- if .Values.externalRedis.enabled }}{{ .Values.externalRedis.sentinel.username }}{{ end }}
{{- end }}

{{/* env of the chart's Redis and Sentinel containers in sentinel mode (files/redis-start.sh reads it). */}}
{{- define "taskqueue.redis.sentinelEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ANNOUNCE_HOST
  value: {{ printf "$(POD_NAME).%s.%s.svc.%s" (include "taskqueue.redis.headless" .) .Release.Namespace .Values.clusterDomain | quote }}
- name: REDIS_PORT
  value: {{ .Values.redis.port | quote }}
- name: SENTINEL_PORT
  value: {{ .Values.redis.sentinel.port | quote }}
- name: SENTINELS
  value: {{ include "taskqueue.redis.sentinels" . | replace "," " " | quote }}
- name: FIRST_PRIMARY
  value: {{ printf "%s:%d" (include "taskqueue.redis.podHost" (dict "ctx" . "i" 0)) (int .Values.redis.port) | quote }}
- name: MASTER_NAME
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- end }}

{{/* -- Webhooks -------------------------------------------------------------------------------- */}}

{{/* "true" when any callback host is allowed (the exporter then sends webhooks and needs the key). */}}
{{- define "taskqueue.webhooks.enabled" -}}
{{- if .Values.webhooks.allowedHosts }}true{{ end }}
{{- end }}

{{/* The Secret with the webhooks' signing key, under the key "webhook-secret". */}}
{{- define "taskqueue.webhooks.secretName" -}}
{{- default (include "taskqueue.componentName" (dict "ctx" . "component" "webhook")) .Values.webhooks.existingSecret }}
{{- end }}

{{/* One webhooks.allowedHosts entry as a CIDR (a bare IP as /32 or /128); empty for a host name. */}}
{{- define "taskqueue.webhooks.cidr" -}}
{{- $h := trim . }}
{{- if or (regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}(/[0-9]{1,2})?$" $h) (contains ":" $h) }}
{{- if contains "/" $h }}{{ $h }}{{ else }}{{ printf "%s/%d" $h (ternary 128 32 (contains ":" $h)) }}{{ end }}
{{- end }}
{{- end }}

{{/* Exporter egress to the receivers listed by address in webhooks.allowedHosts, on any TCP port (the
     callback URL names it). Host names cannot be: they need a rule in networkPolicy.exporterEgress. */}}
{{- define "taskqueue.webhooks.egress" -}}
{{- $cidrs := list }}
{{- range .Values.webhooks.allowedHosts }}
{{- with include "taskqueue.webhooks.cidr" . }}{{ $cidrs = append $cidrs . }}{{ end }}
{{- end }}
{{- with $cidrs -}}
- to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
  ports:
    - protocol: TCP
{{- end }}
{{- end }}

{{/* -- API tokens (the generator's) ----------------------------------------------------------- */}}

{{/* The Secret with the API tokens file, under the key "api-tokens": <fullname>-api-tokens, or the user's. */}}
{{- define "taskqueue.apiTokens.secretName" -}}
{{- default (include "taskqueue.componentName" (dict "ctx" . "component" "api-tokens")) .Values.generator.auth.existingSecret }}
{{- end }}

{{/* Where the tokens Secret is mounted in the generator: a directory (never subPath), so kubelet's update
     of a changed Secret reaches the file, and the generator re-reads it without a restart. */}}
{{- define "taskqueue.apiTokens.dir" -}}/var/run/secrets/taskqueue/tokens{{- end }}

{{/* -- Pod pieces shared by generator, worker and exporter ------------------------------------ */}}

{{/* env of an app container (dict "ctx" $ "component" "worker"): the ConfigMap comes in with envFrom;
     these need the release, and each component logs in to Redis as its own user. */}}
{{- define "taskqueue.appEnv" -}}
{{- $ctx := .ctx }}
- name: TASKQUEUE_REDIS_URL
  value: {{ include "taskqueue.redis.url" $ctx | quote }}
{{- with include "taskqueue.redis.username" . }}
- name: TASKQUEUE_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with include "taskqueue.redis.secretName" $ctx }}
- name: TASKQUEUE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "taskqueue.redis.secretKey" $ }}
{{- end }}
{{- if include "taskqueue.redis.sentinel" $ctx }}
# Redis is the primary these sentinels name (the URL gives only its scheme and database).
- name: TASKQUEUE_REDIS_SENTINELS
  value: {{ include "taskqueue.redis.sentinels" $ctx | quote }}
- name: TASKQUEUE_REDIS_MASTER_NAME
  value: {{ include "taskqueue.redis.masterName" $ctx | quote }}
{{- with include "taskqueue.redis.sentinelUsername" $ctx }}
- name: TASKQUEUE_REDIS_SENTINEL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- $sentinelKey := include "taskqueue.redis.sentinelSecretKey" $ctx }}
{{- with and $sentinelKey (include "taskqueue.redis.secretName" $ctx) }}
- name: TASKQUEUE_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $sentinelKey }}
{{- end }}
{{- end }}
{{- if include "taskqueue.redis.hasCA" $ctx }}
- name: TASKQUEUE_REDIS_CA_CERT
  value: {{ printf "%s/%s" (include "taskqueue.redis.caDir" $ctx) $ctx.Values.externalRedis.tls.caKey | quote }}
{{- end }}
{{- end }}

{{- define "taskqueue.appEnvFrom" -}}
- configMapRef:
    name: {{ include "taskqueue.fullname" . }}
{{- end }}

{{/* Volumes of the app containers: a writable /tmp (read-only root fs) and the Redis CA. */}}
{{- define "taskqueue.appVolumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- if include "taskqueue.redis.hasCA" . }}
- name: redis-ca
  {{- if .Values.externalRedis.tls.caSecret }}
  secret:
    secretName: {{ .Values.externalRedis.tls.caSecret }}
    items:
      - key: {{ .Values.externalRedis.tls.caKey }}
        path: {{ .Values.externalRedis.tls.caKey }}
  {{- else }}
  configMap:
    name: {{ .Values.externalRedis.tls.caConfigMap }}
    items:
      - key: {{ .Values.externalRedis.tls.caKey }}
        path: {{ .Values.externalRedis.tls.caKey }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "taskqueue.appVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "taskqueue.redis.hasCA" . }}
- name: redis-ca
  mountPath: {{ include "taskqueue.redis.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* prometheus.io/* annotations for a Prometheus without the Operator: pass (dict "ctx" $ "port" 9100). */}}
{{- define "taskqueue.scrapeAnnotations" -}}
{{- if .ctx.Values.monitoring.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Pod-level fields every component shares. */}}
{{- define "taskqueue.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "taskqueue.componentName" (dict "ctx" .ctx "component" .component) }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A component's ServiceAccount (no token automount). */}}
{{- define "taskqueue.serviceAccount" -}}
{{- if .ctx.Values.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "taskqueue.componentName" . }}
  labels:
    {{- include "taskqueue.componentLabels" . | nindent 4 }}
  {{- with .ctx.Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .ctx.Values.serviceAccount.automountServiceAccountToken }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers: the Prometheus pods. */}}
{{- define "taskqueue.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.prometheus.namespaceSelector | nindent 4 }}
  podSelector:
    {{- toYaml .Values.networkPolicy.prometheus.podSelector | nindent 4 }}
{{- end }}

{{/* Egress of an app pod: DNS and Redis, nothing else. */}}
{{- define "taskqueue.appEgress" -}}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- if .Values.externalRedis.enabled }}
- ports:
    - protocol: TCP
      port: {{ (split ":" (include "taskqueue.redis.address" .))._1 | int }}
  {{- with .Values.networkPolicy.externalRedisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- $sentinels := list }}
{{- range .Values.externalRedis.sentinel.addresses }}{{ $sentinels = append $sentinels (int (regexReplaceAll "^.*:" . "")) }}{{ end }}
{{- with $sentinels | uniq }}
- ports:
    {{- range . }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with $.Values.networkPolicy.externalRedisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- else }}
- to:
    - podSelector:
        matchLabels:
          {{- include "taskqueue.componentSelectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ .Values.redis.port }}
    {{- if include "taskqueue.redis.sentinel" . }}
    - protocol: TCP
      port: {{ .Values.redis.sentinel.port }}
    {{- end }}
{{- end }}
{{- end }}

{{/* The queue the generator enqueues to: the first of config.queues (as taskqueue.config reads it). */}}
{{- define "taskqueue.defaultQueue" -}}
{{- /* The queue of jobs whose task names none: "default" if config.queues lists it, else the first (config.py). */ -}}
{{- $queues := list }}
{{- range splitList "," (toString .Values.config.queues) }}{{ if trim . }}{{ $queues = append $queues (trim .) }}{{ end }}{{ end }}
{{- has "default" $queues | ternary "default" (first $queues) }}
{{- end }}
