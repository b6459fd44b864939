{{/* Names and labels, as `helm create` makes them. */}}
{{- define "agent-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agent-gateway.fullname" -}}
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

{{- define "agent-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "agent-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "agent-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the container reads: yours, or the one this chart creates from secrets.values. */}}
{{- define "agent-gateway.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.values }}
{{- include "agent-gateway.fullname" . }}
{{- end }}
{{- end }}

{{- define "agent-gateway.configMapName" -}}
{{- default (include "agent-gateway.fullname" .) .Values.config.existingConfigMap }}
{{- end }}

{{/* Seconds the kubelet waits before SIGKILL: longer than the preStop sleep, the delay and the drain. */}}
{{- define "agent-gateway.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.preStopSleepSeconds .Values.gateway.shutdownDelay .Values.gateway.drainTimeout }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + gateway.shutdownDelay + gateway.drainTimeout (%v), or the drain is cut short" .Values.terminationGracePeriodSeconds $needed) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The gateway container. Called with (dict "root" $ "sidecar" bool): as a sidecar it listens on
127.0.0.1 with GATEWAY_AUTH=none, so its probes exec into the container (an httpGet probe comes
from the node and cannot reach a loopback listener).
*/}}
{{- define "agent-gateway.container" -}}
{{- $root := .root }}
{{- $sidecar := .sidecar }}
{{- $auth := ternary "none" $root.Values.gateway.auth $sidecar }}
{{- $secret := include "agent-gateway.secretName" $root -}}
name: gateway
image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}"
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
{{- if and $sidecar $root.Values.sidecar.native }}
restartPolicy: Always
{{- end }}
ports:
  - name: http
    containerPort: {{ $root.Values.containerPort }}
    protocol: TCP
env:
  - {name: GATEWAY_CONFIG, value: /etc/gateway}
  - {name: GATEWAY_HOST, value: {{ ternary "127.0.0.1" "0.0.0.0" $sidecar | quote }}}
  - {name: GATEWAY_PORT, value: {{ $root.Values.containerPort | quote }}}
  - {name: GATEWAY_WORKERS, value: {{ $root.Values.gateway.workers | quote }}}
  - {name: GATEWAY_AUTH, value: {{ $auth | quote }}}
  - {name: GATEWAY_STORE, value: {{ ternary "memory" "redis" (empty $root.Values.redis.mode) | quote }}}
  - {name: GATEWAY_STATE_DIR, value: /var/lib/gateway}
  - {name: GATEWAY_LOG_LEVEL, value: {{ $root.Values.gateway.logLevel | quote }}}
  - {name: GATEWAY_LOG_FORMAT, value: {{ $root.Values.gateway.logFormat | quote }}}
  - {name: GATEWAY_ACCESS_LOG, value: {{ $root.Values.gateway.accessLog | quote }}}
  - {name: GATEWAY_DRAIN_TIMEOUT, value: {{ $root.Values.gateway.drainTimeout | quote }}}
  - {name: GATEWAY_SHUTDOWN_DELAY, value: {{ ternary 0 $root.Values.gateway.shutdownDelay $sidecar | quote }}}
  - {name: GATEWAY_WATCH_CONFIG, value: {{ $root.Values.gateway.watchConfig | quote }}}
  - {name: GATEWAY_RATE_LIMIT_FAILURE, value: {{ $root.Values.gateway.rateLimitFailure | quote }}}
  {{- with $root.Values.gateway.trustedProxies }}
  - {name: GATEWAY_TRUSTED_PROXIES, value: {{ join "," . | quote }}}
  {{- end }}
  {{- if gt (int $root.Values.gateway.workers) 1 }}
  # Shared by the workers so that every scrape shows the whole pod; emptied by the server at start.
  - {name: PROMETHEUS_MULTIPROC_DIR, value: /run/gateway-metrics}
  {{- end }}
  {{- if eq $root.Values.redis.mode "sentinel" }}
  - {name: REDIS_SENTINEL_MASTER, value: {{ $root.Values.redis.sentinel.masterName | quote }}}
  - {name: REDIS_SENTINELS, value: {{ join "," $root.Values.redis.sentinel.sentinels | quote }}}
  {{- end }}
  {{- /* Named again beside envFrom so that a Secret without them stops the pod with a clear event. */}}
  {{- if ne $auth "none" }}
  - name: GATEWAY_ADMIN_KEY
    valueFrom:
      secretKeyRef:
        name: {{ required "gateway.auth is not none: set secrets.existingSecret or secrets.values.GATEWAY_ADMIN_KEY" $secret | quote }}
        key: GATEWAY_ADMIN_KEY
  {{- end }}
  {{- if eq $root.Values.redis.mode "url" }}
  - name: REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ required "redis.mode is url: set secrets.existingSecret or secrets.values.REDIS_URL" $secret | quote }}
        key: REDIS_URL
  {{- end }}
  {{- with $root.Values.gateway.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $secret }}
envFrom:
  - secretRef: {name: {{ . | quote }}}
{{- end }}
{{- if $sidecar }}
startupProbe:
  exec: {command: ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{{ $root.Values.containerPort }}/readyz', timeout=2)"]}
  {{- with $root.Values.startupProbe }}{{ toYaml . | nindent 2 }}{{ end }}
livenessProbe:
  exec: {command: ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{{ $root.Values.containerPort }}/healthz', timeout=2)"]}
  {{- with $root.Values.livenessProbe }}{{ toYaml . | nindent 2 }}{{ end }}
readinessProbe:
  exec: {command: ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:{{ $root.Values.containerPort }}/readyz', timeout=2)"]}
  {{- with $root.Values.readinessProbe }}{{ toYaml . | nindent 2 }}{{ end }}
{{- else }}
startupProbe:
  httpGet: {path: /healthz, port: http}
  {{- with $root.Values.startupProbe }}{{ toYaml . | nindent 2 }}{{ end }}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  {{- with $root.Values.livenessProbe }}{{ toYaml . | nindent 2 }}{{ end }}
readinessProbe:
  httpGet: {path: /readyz, port: http}
  {{- with $root.Values.readinessProbe }}{{ toYaml . | nindent 2 }}{{ end }}
{{- if $root.Values.preStopSleepSeconds }}
lifecycle:
  preStop:
    sleep: {seconds: {{ $root.Values.preStopSleepSeconds }}}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.containerSecurityContext | nindent 2 }}
resources:
  {{- toYaml $root.Values.resources | nindent 2 }}
volumeMounts:
  - {name: config, mountPath: /etc/gateway, readOnly: true}
  - {name: tmp, mountPath: /tmp}
  - {name: state, mountPath: /var/lib/gateway}
  - {name: metrics, mountPath: /run/gateway-metrics}
{{- end }}

{{/* The volumes the container mounts. Directory mounts, never subPath: subPath copies are never updated. */}}
{{- define "agent-gateway.volumes" -}}
- name: config
  configMap: {name: {{ include "agent-gateway.configMapName" . | quote }}}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
- name: state
  emptyDir: {sizeLimit: {{ .Values.state.sizeLimit }}}
- name: metrics
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
{{- end }}

{{/* The gateway as a sidecar: paste into another Deployment's containers (or initContainers when native). */}}
{{- define "agent-gateway.sidecarContainer" -}}
{{ include "agent-gateway.container" (dict "root" . "sidecar" true) }}
{{- end }}
