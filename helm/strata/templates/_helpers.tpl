{{/* Names: <release>-strata unless the release name already holds the chart's. */}}
{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "strata.fullname" -}}
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

{{/* Labels every object carries. */}}
{{- define "strata.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: strata
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "strata.componentLabels" -}}
{{ include "strata.labels" .root }}
{{ include "strata.selectorLabels" . }}
{{- end }}

{{- define "strata.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A pipeline's layer ranges (given its worker values): stages, else an even split of
     split.layers into split.replicas (stage i is [round(i*L/R), round((i+1)*L/R)), as `strata up`
     splits). */}}
{{- define "strata.stages" -}}
{{- if .stages }}
{{- join "," .stages }}
{{- else }}
{{- $l := int .split.layers }}
{{- $r := int .split.replicas }}
{{- $out := list }}
{{- range $i := until $r }}
{{- $l0 := div (add (mul 2 $i $l) $r) (mul 2 $r) }}
{{- $l1 := div (add (mul 2 (add1 $i) $l) $r) (mul 2 $r) }}
{{- $out = append $out (printf "%d:%d" $l0 $l1) }}
{{- end }}
{{- join "," $out }}
{{- end }}
{{- end }}

{{/* The default model's file, which an init container writes when no model.file is given. */}}
{{- define "strata.defaultModelFile" -}}
default-llama-8x256-s42-f16.gguf
{{- end }}

{{/*
The pipelines, resolved, as a JSON list: each entry of .Values.pipelines with
  worker     worker's values, each key the entry gives replacing it (a map key by key, one level)
  model      {file, id, path, synthetic}: the entry's model, else model.file/model.id; the id
             defaults to the file name without .gguf; synthetic: the default model, written by an
             init container
  stages     its layer ranges; replicas: its pipelines (each len(stages) pods)
Fails on a duplicate name, ranges that do not follow each other, or one model id for two files.
*/}}
{{- define "strata.pipelines" -}}
{{- $out := list }}
{{- $names := dict }}
{{- $files := dict }}
{{- range $p := .Values.pipelines }}
{{- if hasKey $names $p.name }}
{{- fail (printf "pipelines: the name %s is given twice" $p.name) }}
{{- end }}
{{- $_ := set $names $p.name true }}
{{- $w := deepCopy $.Values.worker }}
{{- range $k, $v := omit $p "name" "replicas" "model" }}
{{- if and (kindIs "map" $v) (kindIs "map" (get $w $k)) }}
{{- $m := deepCopy (get $w $k) }}
{{- range $k2, $v2 := $v }}
{{- $_ := set $m $k2 $v2 }}
{{- end }}
{{- $_ := set $w $k $m }}
{{- else }}
{{- $_ := set $w $k $v }}
{{- end }}
{{- end }}
{{- $given := $p.model | default dict }}
{{- $file := $given.file | default $.Values.model.file }}
{{- $id := $given.id | default (ternary $.Values.model.id "" (eq $file $.Values.model.file)) }}
{{- $path := printf "%s/%s" $.Values.model.mountPath ($file | default (include "strata.defaultModelFile" $)) }}
{{- $id = $id | default (trimSuffix ".gguf" (base $path)) }}
{{- if and (hasKey $files $id) (ne (get $files $id) $path) }}
{{- fail (printf "pipelines: the model id %s names two files, %s and %s" $id (get $files $id) $path) }}
{{- end }}
{{- $_ := set $files $id $path }}
{{- $stages := include "strata.stages" $w }}
{{- $next := 0 }}
{{- range $s := splitList "," $stages }}
{{- $r := splitList ":" $s }}
{{- if or (ne (int (index $r 0)) $next) (le (int (index $r 1)) $next) }}
{{- fail (printf "pipeline %s: stages %s: each range must start where the previous one ends, from layer 0" $p.name $stages) }}
{{- end }}
{{- $next = int (index $r 1) }}
{{- end }}
{{- $replicas := ternary $p.replicas 1 (hasKey $p "replicas") }}
{{- $out = append $out (dict "name" $p.name "replicas" (int $replicas) "worker" $w "stages" (splitList "," $stages)
  "model" (dict "file" $file "id" $id "path" $path "synthetic" (empty $file))) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The models of the pipelines, each once, in order (JSON list of {file, id, path, synthetic}). */}}
{{- define "strata.models" -}}
{{- $out := list }}
{{- $seen := dict }}
{{- range $p := include "strata.pipelines" . | fromJsonArray }}
{{- if not (hasKey $seen $p.model.id) }}
{{- $_ := set $seen $p.model.id true }}
{{- $out = append $out $p.model }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Headless Service of the workers: each pod is <pod>.<this>.<namespace>.svc.<clusterDomain>. */}}
{{- define "strata.workerService" -}}
{{ include "strata.fullname" . }}-worker
{{- end }}

{{/*
STRATA_NATS_URL of a role (dict "root" . "role" "worker"): the built-in NATS (with auth, as the
role's user, its password from the nats-users Secret), an external URL, or a Secret.
*/}}
{{- define "strata.natsEnv" -}}
{{- $root := .root }}
{{- if and $root.Values.nats.enabled $root.Values.nats.auth.enabled }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "strata.fullname" $root }}-nats-users
      key: {{ .role }}
{{- end }}
- name: STRATA_NATS_URL
{{- if $root.Values.nats.enabled }}
{{- $fullname := include "strata.fullname" $root }}
{{- $auth := ternary (printf "strata-%s:$(NATS_PASSWORD)@" .role) "" $root.Values.nats.auth.enabled }}
{{- $urls := list }}
{{- range $i := until (int $root.Values.nats.replicas) }}
{{- $urls = append $urls (printf "nats://%s%s-nats-%d.%s-nats-headless:%d" $auth $fullname $i $fullname (int $root.Values.nats.port)) }}
{{- end }}
  value: {{ join "," $urls | quote }}
{{- else if $root.Values.nats.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.nats.urlSecret.name }}
      key: {{ $root.Values.nats.urlSecret.key }}
{{- else }}
  value: {{ required "nats.url is required when nats.enabled is false and nats.urlSecret.name is empty" $root.Values.nats.url | quote }}
{{- end }}
{{- end }}

{{/*
What each role may publish and subscribe to: the same lists as natsPermissions() in
libs/wire/src/permissions.ts (test/deploy.test.ts holds them equal).
*/}}
{{- define "strata.natsPermissions" -}}
{{- $p := "strata.v1" -}}
{{- $own := list (printf "%s.coordinator.result.>" $p) (printf "%s.coordinator.leader" $p) -}}
{{- $perms := dict
  "worker" (dict
    "publish" (dict "allow" (list (printf "%s.worker.heartbeat" $p) (printf "%s.worker.step.*" $p) (printf "%s.worker.ring.*" $p) (printf "%s.coordinator.result.*" $p) (printf "%s.coordinator.drain" $p)) "deny" list)
    "subscribe" (dict "allow" (list (printf "%s.worker.step.*" $p) (printf "%s.worker.ring.*" $p) (printf "%s.worker.seq.*" $p) (printf "%s.worker.migrate.*" $p) (printf "%s.worker.stats.*" $p) (printf "%s.coordinator.leader" $p) "_INBOX.>") "deny" list)
    "allow_responses" true)
  "coordinator" (dict
    "publish" (dict "allow" (list (printf "%s.worker.step.*" $p) (printf "%s.worker.seq.*" $p) (printf "%s.worker.migrate.*" $p) (printf "%s.gateway.events.*" $p) (printf "%s.coordinator.leader" $p)) "deny" list)
    "subscribe" (dict "allow" (list (printf "%s.worker.heartbeat" $p) (printf "%s.coordinator.>" $p) "_INBOX.>") "deny" list)
    "allow_responses" true)
  "gateway" (dict
    "publish" (dict "allow" (list (printf "%s.coordinator.>" $p)) "deny" $own)
    "subscribe" (dict "allow" (list (printf "%s.gateway.events.*" $p) (printf "%s.coordinator.leader" $p) "_INBOX.>") "deny" list)
    "allow_responses" false)
  "operator" (dict
    "publish" (dict "allow" (list (printf "%s.coordinator.>" $p) (printf "%s.worker.stats.*" $p)) "deny" $own)
    "subscribe" (dict "allow" (list "_INBOX.>") "deny" list)
    "allow_responses" false)
-}}
{{- toJson $perms -}}
{{- end }}

{{/* "a", "b": a list of strings quoted for nats.conf. */}}
{{- define "strata.quoteList" -}}
{{- range $i, $x := . }}{{ if $i }}, {{ end }}{{ $x | quote }}{{ end }}
{{- end }}

{{- define "strata.redisEnv" -}}
- name: STRATA_REDIS_URL
{{- if and .Values.redis.enabled .Values.redis.auth.enabled }}
  valueFrom:
    secretKeyRef:
      name: {{ include "strata.fullname" . }}-redis-auth
      key: url
{{- else if and .Values.redis.enabled (gt (int .Values.redis.replicas) 0) }}
  value: {{ printf "redis-sentinel://%s/%s" (include "strata.sentinelHosts" .) (include "strata.redisPrimaryName" .) | quote }}
{{- else if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:6379" (include "strata.fullname" .) | quote }}
{{- else if .Values.redis.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.urlSecret.name }}
      key: {{ .Values.redis.urlSecret.key }}
{{- else }}
  value: {{ required "redis.url is required when redis.enabled is false and redis.urlSecret.name is empty" .Values.redis.url | quote }}
{{- end }}
{{- end }}

{{/*
Spreads a component's pods over nodes where it can (dict "root" . "component" "nats"): losing a
node then takes one server of a cluster, not all.
*/}}
{{- define "strata.spreadAffinity" -}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels: {{- include "strata.selectorLabels" (dict "root" .root "component" .component) | nindent 14 }}
{{- end }}

{{/* The GGUF files a pod reads and their ids (a list of resolved models): STRATA_MODEL and
     STRATA_MODEL_ID, comma-separated when the gateway serves several. */}}
{{- define "strata.modelEnv" -}}
{{- $paths := list }}
{{- $ids := list }}
{{- range $m := . }}
{{- $paths = append $paths $m.path }}
{{- $ids = append $ids $m.id }}
{{- end }}
- name: STRATA_MODEL
  value: {{ join "," $paths | quote }}
- name: STRATA_MODEL_ID
  value: {{ join "," $ids | quote }}
{{- end }}

{{/* Volumes of a pod that reads models (dict "root" . "models" <resolved models>), plus /tmp
     (the root file system is read-only). The claim is writable only where the default model may
     have to be written into it. */}}
{{- define "strata.modelVolumes" -}}
{{- $synthetic := false }}
{{- range $m := .models }}
{{- $synthetic = or $synthetic $m.synthetic }}
{{- end }}
- name: models
{{- if .root.Values.model.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.model.existingClaim }}
    readOnly: {{ not $synthetic }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .root.Values.model.emptyDirSize }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* The services only read the model; the init container below writes it. */}}
{{- define "strata.modelMounts" -}}
- name: models
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Where a pod reads the default model (dict "root" . "models" <resolved models>): an init
     container writes it (what `strata up` serves: llama, 8 layers, n_embd 256, seed 42, f16) into
     the models volume unless it is there. */}}
{{- define "strata.modelInit" -}}
{{- $synthetic := list }}
{{- range $m := .models }}
{{- if $m.synthetic }}
{{- $synthetic = list $m }}
{{- end }}
{{- end }}
{{- with .root }}
{{- if $synthetic -}}
initContainers:
  - name: model
    image: {{ include "strata.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    securityContext: {{- toYaml .Values.securityContext | nindent 6 }}
    command: ["sh", "-c"]
    args:
      - >-
        test -f "$STRATA_MODEL" || {
        node /app/bin/strata.mjs model synth --out "$STRATA_MODEL.tmp" --arch llama --n-layer 8
        --n-embd 256 --n-head 8 --n-head-kv 4 --n-ff 768 --n-ctx-train 4096 --seed 42 --type f16
        && mv "$STRATA_MODEL.tmp" "$STRATA_MODEL"; }
    env:
      - name: STRATA_MODEL
        value: {{ (index $synthetic 0).path | quote }}
    volumeMounts:
      - name: models
        mountPath: {{ .Values.model.mountPath }}
      - name: tmp
        mountPath: /tmp
    resources: {{- toYaml .Values.model.initResources | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Prometheus endpoint, only where metrics are on, on every address so a scraper reaches it. */}}
{{- define "strata.metricsArgs" -}}
{{- if .Values.metrics.enabled }}
- --metrics-port
- {{ .Values.metrics.port | quote }}
- --metrics-host
- 0.0.0.0
{{- end }}
{{- end }}

{{- define "strata.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Secrets: the one named in values, else the chart's own when it makes one, else empty. */}}
{{- define "strata.apiKeysSecret" -}}
{{- if .Values.gateway.apiKeys.existingSecret }}
{{- .Values.gateway.apiKeys.existingSecret }}
{{- else if .Values.gateway.apiKeys.keys }}
{{- include "strata.fullname" . }}-api-keys
{{- end }}
{{- end }}

{{- define "strata.transferTokenSecret" -}}
{{- if .Values.worker.transferToken.existingSecret }}
{{- .Values.worker.transferToken.existingSecret }}
{{- else if .Values.worker.transferToken.generate }}
{{- include "strata.fullname" . }}-transfer-token
{{- end }}
{{- end }}

{{/* The Secret of the term keys: the chart's or the operator's. */}}
{{- define "strata.termSecret" -}}
{{ .Values.termKeys.existingSecret | default (printf "%s-term-keys" (include "strata.fullname" .)) }}
{{- end }}

{{/* The term key files a role mounts (key: coordinators; crt: workers, gateways). */}}
{{- define "strata.termVolume" -}}
{{- if .root.Values.termKeys.enabled }}
- name: term-keys
  secret:
    secretName: {{ include "strata.termSecret" .root }}
    defaultMode: 0440
    items:
      - { key: {{ .item }}, path: {{ .item }} }
{{- end }}
{{- end }}

{{- define "strata.termMount" -}}
{{- if .Values.termKeys.enabled }}
- { name: term-keys, mountPath: /var/run/strata/term, readOnly: true }
{{- end }}
{{- end }}
