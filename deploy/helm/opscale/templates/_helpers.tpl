{{/*
Shared pieces of the opscale chart. The component templates call them with a dict:
  root: the chart's top-level context ($), component: router | aggregator | forecaster | planner |
  node-agent, section: its key in .Values.config, key: its key in .Values (router, ..., nodeAgent),
  values: its own values (.Values.router, ...); optionally podNameEnv: a setting taken from the pod's
  name (the replica's identity), extraEnv: further environment entries of the component.
*/}}

{{/* Labels every object of the release carries. */}}
{{- define "opscale.commonLabels" -}}
app.kubernetes.io/part-of: opscale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* What a component's selector matches: as in deploy/k8s. */}}
{{- define "opscale.selector" -}}
app.kubernetes.io/name: opscale-{{ .component }}
{{- end }}

{{- define "opscale.labels" -}}
{{ include "opscale.selector" . }}
app.kubernetes.io/component: {{ .component }}
{{ include "opscale.commonLabels" .root }}
{{- end }}

{{- define "opscale.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) | quote }}
{{- end }}

{{/* True (non-empty) when the component mounts the API keys Secret: the router, when one is named. */}}
{{- define "opscale.apiKeys" -}}
{{- if and (eq .component "router") .root.Values.secrets.apiKeys.existingSecret -}}true{{- end -}}
{{- end }}

{{/* The settings file: .Values.config with the TLS settings of .Values.secrets.tls added (what
.Values.config sets itself wins). */}}
{{- define "opscale.config" -}}
{{- $tls := .Values.secrets.tls -}}
{{- $derived := dict -}}
{{- if $tls.enabled -}}
{{- $ca := printf "%s/ca.crt" $tls.mountPath -}}
{{- $_ := set $derived "grpc_tls" (dict "ca_file" $ca "cert_file" (printf "%s/tls.crt" $tls.mountPath)
                                        "key_file" (printf "%s/tls.key" $tls.mountPath)) -}}
{{- $_ := set $derived "planner" (dict "grpc_tls" (dict "server_name" $tls.nodeAgentServerName)) -}}
{{- if $tls.nats -}}
{{- $_ := set $derived "nats_auth" (dict "tls_ca_file" $ca) -}}
{{- end -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.config) $derived) -}}
{{- end }}

{{/* The environment: the settings file, the replica's identity, then the NATS and Redis credentials
from their Secrets (OPSCALE_<SECTION>_...), then the component's own entries and the user's. */}}
{{- define "opscale.env" -}}
{{- $prefix := printf "OPSCALE_%s_" (upper .section) -}}
{{- $secrets := .root.Values.secrets -}}
- name: OPSCALE_CONFIG
  value: /etc/opscale/config.yaml
{{- if include "opscale.apiKeys" . }}
- name: OPSCALE_ROUTER_AUTH__KEYS_FILE
  value: /etc/opscale-auth/{{ $secrets.apiKeys.key }}
{{- end }}
{{- with .podNameEnv }}
- name: {{ . }}
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if $secrets.nats.existingSecret }}
{{- $user := required (printf "secrets.nats.users.%s: the NATS user of the %s" .key .component)
                      (index $secrets.nats.users .key) }}
- name: {{ $prefix }}NATS_AUTH__USER
  value: {{ $user | quote }}
- name: {{ $prefix }}NATS_AUTH__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secrets.nats.existingSecret }}
      key: {{ $user | quote }}
{{- end }}
{{- if $secrets.redis.existingSecret }}
{{- with $secrets.redis.username }}
- name: {{ $prefix }}REDIS_AUTH__USERNAME
  value: {{ . | quote }}
{{- end }}
- name: {{ $prefix }}REDIS_AUTH__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secrets.redis.existingSecret }}
      key: {{ $secrets.redis.key | quote }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "opscale.volumeMounts" -}}
- name: config
  mountPath: /etc/opscale
  readOnly: true
{{- if .root.Values.secrets.tls.enabled }}
- name: tls
  mountPath: {{ .root.Values.secrets.tls.mountPath }}
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- if include "opscale.apiKeys" . }}
- name: api-keys
  mountPath: /etc/opscale-auth
  readOnly: true
{{- end }}
{{- range .root.Values.secrets.mounts }}
{{- if has $.component (.services | default list) }}
- name: secret-{{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "opscale.volumes" -}}
- name: config
  configMap:
    name: opscale-config
{{- if .root.Values.secrets.tls.enabled }}
# ca.crt, tls.crt, tls.key of this service's identity, readable by the owner and fsGroup only
- name: tls
  secret:
    secretName: {{ required (printf "secrets.tls.existingSecrets.%s: the TLS Secret of the %s" .key .component)
                   (index .root.Values.secrets.tls.existingSecrets .key) }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir: {}
{{- if include "opscale.apiKeys" . }}
- name: api-keys
  secret:
    secretName: {{ .root.Values.secrets.apiKeys.existingSecret }}
{{- end }}
{{- range .root.Values.secrets.mounts }}
{{- if has $.component (.services | default list) }}
- name: secret-{{ .name }}
  secret:
    secretName: {{ .secretName }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pod-level fields every component shares (below `spec:` of a pod template). */}}
{{- define "opscale.podCommon" -}}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "opscale.volumes" . | nindent 2 }}
{{- end }}

{{/* The pod template's metadata: labels, Prometheus scrape annotations, and the config's checksum, so
that a changed ConfigMap rolls the pods. */}}
{{- define "opscale.podMetadata" -}}
labels:
  {{- include "opscale.labels" . | nindent 2 }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ (index .root.Values.config .section).ops_port | quote }}
  prometheus.io/path: /metrics
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- end }}

{{/* The container's name, image, command, env, ports (from .ports: name and config key) and mounts. */}}
{{- define "opscale.container" -}}
{{- $cfg := index .root.Values.config .section -}}
- name: {{ .component }}
  image: {{ include "opscale.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["opscale", "serve", {{ .component | quote }}]
  env:
    {{- include "opscale.env" . | nindent 4 }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      containerPort: {{ index $cfg .key }}
    {{- end }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "opscale.volumeMounts" . | nindent 4 }}
{{- end }}

{{/* A Deployment and its Service, for the router, aggregator, forecaster and planner. */}}
{{- define "opscale.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: opscale-{{ .component }}
  labels:
    {{- include "opscale.labels" . | nindent 4 }}
spec:
  replicas: {{ .values.replicas }}
  selector:
    matchLabels:
      {{- include "opscale.selector" . | nindent 6 }}
  {{- with .strategy }}
  strategy:
    type: {{ . }}
  {{- end }}
  template:
    metadata:
      {{- include "opscale.podMetadata" . | nindent 6 }}
    spec:
      terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
      {{- include "opscale.podCommon" . | nindent 6 }}
      containers:
        {{- include "opscale.container" . | nindent 8 }}
          readinessProbe:
            httpGet: {path: /readyz, port: ops}
            periodSeconds: 5
          livenessProbe:
            httpGet: {path: /healthz, port: ops}
            initialDelaySeconds: 10
            periodSeconds: 10
            failureThreshold: 3
          resources:
            {{- toYaml .values.resources | nindent 12 }}
---
apiVersion: v1
kind: Service
metadata:
  name: opscale-{{ .component }}
  labels:
    {{- include "opscale.labels" . | nindent 4 }}
spec:
  type: {{ (.values.service | default dict).type | default "ClusterIP" }}
  selector:
    {{- include "opscale.selector" . | nindent 4 }}
  ports:
    {{- $cfg := index .root.Values.config .section }}
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ index $cfg .key }}
      targetPort: {{ .name }}
    {{- end }}
{{- end }}
