{{/* Names, labels and the pieces both roles share. */}}

{{- define "bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.fullname" -}}
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

{{/* Object name for a role: <fullname>-<role>, kept within the 63-character DNS label limit. */}}
{{- define "bridge.roleName" -}}
{{- printf "%s-%s" (include "bridge.fullname" .root | trunc (int (sub 62 (len .role))) | trimSuffix "-") .role }}
{{- end }}

{{- define "bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bridge.labels" -}}
helm.sh/chart: {{ include "bridge.chart" . }}
{{ include "bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sectra-strand-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels for one role; call with (dict "root" $ "role" "web"). */}}
{{- define "bridge.roleLabels" -}}
{{ include "bridge.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "bridge.roleSelectorLabels" -}}
{{ include "bridge.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "bridge.secretName" -}}
{{- default (printf "%s-secrets" (include "bridge.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "bridge.appsConfigMapName" -}}
{{- default (printf "%s-apps" (include "bridge.fullname" .)) .Values.existingAppsConfigMap }}
{{- end }}

{{- define "bridge.appsEnabled" -}}
{{- if or .Values.apps .Values.existingAppsConfigMap }}true{{- end }}
{{- end }}

{{- define "bridge.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tls))) (first .Values.ingress.hosts).host }}
{{- end }}
{{- end }}

{{- define "bridge.redisHost" -}}
{{- include "bridge.roleName" (dict "root" . "role" "redis") }}
{{- end }}

{{- define "bridge.redisAuth" -}}
{{- if and (eq .Values.redis.mode "bundled") .Values.redis.bundled.auth.enabled }}true{{- end }}
{{- end }}

{{/*
The pod-level security context both bridge roles share: the image's fixed non-root UID, and
fsGroup so the kubelet makes the mounted volumes writable for it.
*/}}
{{- define "bridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "bridge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* Restart pods when their configuration or credentials change. */}}
{{- define "bridge.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/*
Environment both roles read: settings from the ConfigMap, credentials from the Secret, and
the Redis URL. Secret keys other than the Strand key are optional, so a deployment without
(for example) an admin token simply runs with that feature off.
*/}}
{{- define "bridge.secretEnv" -}}
{{- $secret := include "bridge.secretName" .root -}}
- name: STRAND_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.strandApiKey }}
- name: SECTRA_CLIENT_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.sectraClientId }}
      optional: true
- name: SECTRA_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.sectraClientSecret }}
      optional: true
{{- if eq .role "web" }}
- name: BRIDGE_WEBHOOK_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.webhookToken }}
      optional: true
- name: BRIDGE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.adminToken }}
      optional: true
{{- end }}
{{- if eq .root.Values.redis.mode "external" }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.redisUrl }}
{{- else if include "bridge.redisAuth" .root }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .root.Values.secrets.keys.redisPassword }}
- name: REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "bridge.redisHost" .root }}:6379/0"
{{- else }}
- name: REDIS_URL
  value: "redis://{{ include "bridge.redisHost" .root }}:6379/0"
{{- end }}
{{- with .root.Values.proxy.https }}
- name: HTTPS_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .root.Values.proxy.noProxy }}
- name: NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- if include "bridge.appsEnabled" .root }}
- name: BRIDGE_APPS_FILE
  value: /etc/sectra-bridge/apps.yaml
{{- end }}
{{- end }}

{{/* Volumes both roles mount: /tmp, the work dir and (when configured) the apps file. */}}
{{- define "bridge.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: work
  mountPath: /var/lib/sectra-bridge/work
{{- if include "bridge.appsEnabled" .root }}
- name: apps
  mountPath: /etc/sectra-bridge
  readOnly: true
{{- end }}
{{- end }}

{{- define "bridge.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmp.sizeLimit }}
{{- if eq .role "web" }}
- name: work
  emptyDir:
    sizeLimit: {{ .root.Values.web.workDirSizeLimit }}
{{- else if eq .root.Values.workDir.type "ephemeral" }}
- name: work
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels:
          {{- include "bridge.roleSelectorLabels" . | nindent 10 }}
      spec:
        accessModes:
          - ReadWriteOnce
        {{- with .root.Values.workDir.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .root.Values.workDir.sizeLimit }}
{{- else }}
- name: work
  emptyDir:
    sizeLimit: {{ .root.Values.workDir.sizeLimit }}
{{- end }}
{{- if include "bridge.appsEnabled" .root }}
- name: apps
  configMap:
    name: {{ include "bridge.appsConfigMapName" .root }}
    items:
      - key: apps.yaml
        path: apps.yaml
{{- end }}
{{- end }}

{{/* Egress both roles need: DNS, Redis, Strand, Sectra (and whatever the operator adds). */}}
{{- define "bridge.egressRules" -}}
{{- $np := .Values.networkPolicy -}}
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- if eq .Values.redis.mode "bundled" }}
- to:
    - podSelector:
        matchLabels:
          {{- include "bridge.roleSelectorLabels" (dict "root" . "role" "redis") | nindent 10 }}
  ports:
    - protocol: TCP
      port: 6379
{{- else if .Values.redis.external.cidrs }}
- to:
    {{- range .Values.redis.external.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .Values.redis.external.port }}
{{- end }}
- to:
    {{- range $np.strand.cidrs }}
    - ipBlock:
        cidr: {{ . }}
        {{- if and (eq . "0.0.0.0/0") $np.strand.except }}
        except:
          {{- toYaml $np.strand.except | nindent 10 }}
        {{- end }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ $np.strand.port }}
{{- range $np.sectra }}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
  ports:
    {{- range (default (list 443) .ports) }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end }}
