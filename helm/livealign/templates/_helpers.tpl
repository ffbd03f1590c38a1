{{/* Names and labels. */}}
{{- define "livealign.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "livealign.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "livealign.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "livealign.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "livealign.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livealign.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "livealign.labels" -}}
{{ include "livealign.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The monitoring objects carry the label the Prometheus operator selects them by. */}}
{{- define "livealign.monitorLabels" -}}
{{ include "livealign.labels" . }}
release: {{ .Values.monitoring.release | quote }}
{{- end -}}

{{- define "livealign.image" -}}
{{- $suffix := ternary "-cuda" "" (eq .Values.image.variant "cuda") -}}
{{- printf "%s:%s%s" .Values.image.repository .Values.image.tag $suffix -}}
{{- end -}}

{{- define "livealign.secretsName" -}}
{{- default (printf "%s-secrets" (include "livealign.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "livealign.apiKeysName" -}}
{{- default (printf "%s-api-keys" (include "livealign.fullname" .)) .Values.serving.apiKeys.existingSecret -}}
{{- end -}}

{{- define "livealign.registryClaim" -}}
{{- default (printf "%s-registry" (include "livealign.fullname" .)) .Values.registry.existingClaim -}}
{{- end -}}

{{- define "livealign.kafkaCluster" -}}
{{- printf "%s-kafka" (include "livealign.fullname" .) -}}
{{- end -}}

{{- define "livealign.bootstrap" -}}
{{- if eq .Values.kafka.mode "external" -}}
{{- required "kafka.external.bootstrap is required with kafka.mode=external" .Values.kafka.external.bootstrap -}}
{{- else -}}
{{- printf "%s-kafka-bootstrap:9092" (include "livealign.kafkaCluster" .) -}}
{{- end -}}
{{- end -}}

{{/* Where the secrets and the API keys are mounted (livealign/config.py reads them). */}}
{{- define "livealign.secretsDir" -}}/etc/livealign/secrets{{- end -}}
{{- define "livealign.apiKeysDir" -}}/etc/livealign/api-keys{{- end -}}
{{- define "livealign.home" -}}/var/lib/livealign{{- end -}}

{{/* Every part's settings: LIVEALIGN_* variables (livealign/config.py), no secret among
them (those are files in the secrets folder). */}}
{{- define "livealign.env" -}}
- name: LIVEALIGN_HOME
  value: {{ include "livealign.home" . }}
- name: LIVEALIGN_SECRETS_DIR
  value: {{ include "livealign.secretsDir" . }}
- name: LIVEALIGN_KAFKA
  value: {{ include "livealign.bootstrap" . | quote }}
- name: LIVEALIGN_PROCESSOR_GROUP
  value: {{ printf "%s-processor" (include "livealign.fullname" .) }}
- name: LIVEALIGN_PARTITIONS
  value: {{ .Values.kafka.topics.partitions | quote }}
- name: LIVEALIGN_MODEL
  value: {{ .Values.model.name | quote }}
- name: LIVEALIGN_SERVED_MODEL_NAME
  value: {{ .Values.model.servedName | quote }}
- name: LIVEALIGN_MAX_MODEL_LEN
  value: {{ .Values.model.maxModelLen | quote }}
- name: LIVEALIGN_KV_CACHE_GIB
  value: {{ .Values.model.kvCacheGiB | quote }}
- name: LIVEALIGN_DTYPE
  value: {{ .Values.model.dtype | quote }}
- name: LIVEALIGN_FUSION_MODE
  value: {{ .Values.processor.fusionMode | quote }}
- name: LIVEALIGN_TRAINER_INTERVAL_S
  value: {{ .Values.trainer.intervalS | quote }}
- name: LIVEALIGN_TRAINER_MIN_NEW_RECORDS
  value: {{ .Values.trainer.minNewRecords | quote }}
- name: LIVEALIGN_CANARY_UNIT
  value: {{ .Values.canary.unit | quote }}
- name: LIVEALIGN_API_KEYS
  value: {{ .Values.serving.apiKeys.enabled | quote }}
- name: LIVEALIGN_API_KEYS_PATH
  value: {{ printf "%s/api_keys.json" (include "livealign.apiKeysDir" .) }}
- name: LIVEALIGN_METRICS_HOST
  value: "0.0.0.0"
- name: LIVEALIGN_SERVING_METRICS_PORT
  value: {{ .Values.serving.metricsPort | quote }}
- name: LIVEALIGN_PROCESSOR_METRICS_PORT
  value: {{ .Values.processor.metricsPort | quote }}
- name: LIVEALIGN_TRAINER_METRICS_PORT
  value: {{ .Values.trainer.metricsPort | quote }}
- name: LIVEALIGN_CANARY_METRICS_PORT
  value: {{ .Values.canary.metricsPort | quote }}
- name: LIVEALIGN_CACHE
  value: /var/cache/livealign
- name: HOME
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The secrets folder: the chart's (or the given) Secret and the store URL's Secret,
projected into one folder under the names pydantic-settings looks for. */}}
{{- define "livealign.secretVolumes" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "livealign.secretsName" . }}
          items:
            - {key: feedback_secret, path: livealign_feedback_secret}
            - {key: user_hash_salt, path: livealign_user_hash_salt}
            - {key: admin_key, path: livealign_admin_key}
      - secret:
          name: {{ .Values.store.existingSecret }}
          items:
            - key: {{ .Values.store.key }}
              path: livealign_store_url
- name: home
  emptyDir: {}
- name: cache
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "livealign.secretMounts" -}}
- {name: secrets, mountPath: {{ include "livealign.secretsDir" . }}, readOnly: true}
- {name: home, mountPath: {{ include "livealign.home" . }}}
- {name: cache, mountPath: /var/cache/livealign}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* What a Ray pod mounts besides: the registry, the API keys, the model, /dev/shm. */}}
{{- define "livealign.rayVolumes" -}}
{{ include "livealign.secretVolumes" . }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ include "livealign.registryClaim" . }}
- name: api-keys
  secret:
    secretName: {{ include "livealign.apiKeysName" . }}
    defaultMode: 0440
- name: shm
  emptyDir:
    medium: Memory
{{- if .Values.model.volume.claimName }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.volume.claimName }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "livealign.rayMounts" -}}
{{ include "livealign.secretMounts" . }}
- {name: registry, mountPath: {{ printf "%s/registry" (include "livealign.home" .) }}}
- {name: api-keys, mountPath: {{ include "livealign.apiKeysDir" . }}, readOnly: true}
- {name: shm, mountPath: /dev/shm}
{{- if .Values.model.volume.claimName }}
- {name: model, mountPath: {{ .Values.model.volume.mountPath }}, readOnly: true}
{{- end }}
{{- end -}}

{{- define "livealign.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* A pod's scheduling: the GPU node selector and tolerations where it takes a GPU. */}}
{{- define "livealign.rayScheduling" -}}
{{- $gpu := and .root.Values.gpu.enabled .gpu -}}
{{- $sel := ternary (merge (deepCopy .root.Values.gpu.nodeSelector) .root.Values.ray.nodeSelector) .root.Values.ray.nodeSelector $gpu -}}
{{- $tol := ternary (concat .root.Values.ray.tolerations .root.Values.gpu.tolerations) .root.Values.ray.tolerations $gpu -}}
{{- with $sel }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tol }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* resources plus nvidia.com/gpu where the part takes GPUs. */}}
{{- define "livealign.gpuResources" -}}
{{- $res := deepCopy .resources -}}
{{- if and .root.Values.gpu.enabled (gt (int .gpus) 0) -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.limits)) -}}
{{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.requests)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The checks no schema can make. (A missing operator is no error here: helm lint knows
no custom resource. Each such object is rendered only where the cluster has its API, and
NOTES.txt says what is missing.) */}}
{{- define "livealign.checks" -}}
{{- if gt (int .Values.processor.replicas) (int .Values.kafka.topics.partitions) -}}
{{- fail (printf "processor.replicas (%d) > kafka.topics.partitions (%d): the extra processors would get no partition" (int .Values.processor.replicas) (int .Values.kafka.topics.partitions)) -}}
{{- end -}}
{{- if and .Values.gpu.enabled (ne .Values.image.variant "cuda") -}}
{{- fail "gpu.enabled needs image.variant=cuda (the CPU image's vLLM cannot use a GPU)" -}}
{{- end -}}
{{- if and (eq .Values.kafka.mode "strimzi") (gt (int .Values.kafka.topics.replication) (int .Values.kafka.strimzi.replicas)) -}}
{{- fail "kafka.topics.replication is larger than kafka.strimzi.replicas" -}}
{{- end -}}
{{- end -}}

{{/* What every Ray pod's spec shares. */}}
{{- define "livealign.rayPodSpec" -}}
serviceAccountName: {{ include "livealign.fullname" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- include "livealign.rayScheduling" . }}
{{- end -}}
