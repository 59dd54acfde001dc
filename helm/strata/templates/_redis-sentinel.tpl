{{/*
The built-in Redis with replicas (redis.replicas > 0): how servers and sentinels start, the
sentinels' StatefulSet, and the URL coordinators use. Every server and sentinel asks the
sentinels which server is the primary when it starts, so a restarted former primary comes back as
a replica instead of a second primary; pod 0 is the primary only of a fresh install.
*/}}

{{/* The sentinels' name for the primary. */}}
{{- define "strata.redisPrimaryName" -}}
{{ include "strata.fullname" . }}
{{- end }}

{{/* The sentinels' addresses, host:port separated by commas. */}}
{{- define "strata.sentinelHosts" -}}
{{- $fullname := include "strata.fullname" . }}
{{- $hosts := list }}
{{- range $i := until (int .Values.redis.sentinel.replicas) }}
{{- $hosts = append $hosts (printf "%s-sentinel-%d.%s-sentinel-headless:%d" $fullname $i $fullname (int $.Values.redis.sentinel.port)) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/* The shell lines that set PRIMARY: the primary the sentinels name, else pod 0. */}}
{{- define "strata.findPrimary" -}}
PRIMARY=""
for s in $(echo "{{ include "strata.sentinelHosts" . }}" | tr ',' ' '); do
  PRIMARY="$(redis-cli -h "${s%:*}" -p "${s##*:}" --raw SENTINEL get-master-addr-by-name {{ include "strata.redisPrimaryName" . }} 2>/dev/null | head -n 1)" || PRIMARY=""
  [ -n "$PRIMARY" ] && break
done
# No sentinel answers: a fresh install; pod 0 is the first primary.
[ -n "$PRIMARY" ] || PRIMARY="{{ include "strata.fullname" . }}-redis-0.{{ include "strata.fullname" . }}-redis-headless"
{{- end }}

{{- define "strata.redisSentinelConfig" -}}
{{- $fullname := include "strata.fullname" . }}
{{- $name := include "strata.redisPrimaryName" . }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $fullname }}-redis-start
  labels: {{- include "strata.componentLabels" (dict "root" . "component" "redis") | nindent 4 }}
data:
  # redis-server "$@" as the primary the sentinels name, or as its replica
  redis-start.sh: |
    set -e
    ME="$(hostname).{{ $fullname }}-redis-headless"
    {{- include "strata.findPrimary" . | nindent 4 }}
    set -- redis-server "$@" --replica-announce-ip "$ME"
    # any server may be made a replica later: each can log in to a primary
    [ -z "$REPLICATION_PASSWORD" ] || set -- "$@" --masteruser strata-replication --masterauth "$REPLICATION_PASSWORD"
    [ "$PRIMARY" = "$ME" ] || set -- "$@" --replicaof "$PRIMARY" 6379
    exec "$@"
  # a sentinel watching the primary the other sentinels name (its config is its own to rewrite)
  sentinel-start.sh: |
    set -e
    ME="$(hostname).{{ $fullname }}-sentinel-headless"
    {{- include "strata.findPrimary" . | nindent 4 }}
    CONF=/data/sentinel.conf
    {
      echo "port {{ .Values.redis.sentinel.port }}"
      echo "sentinel resolve-hostnames yes"
      echo "sentinel announce-hostnames yes"
      echo "sentinel announce-ip $ME"
      echo "sentinel monitor {{ $name }} $PRIMARY 6379 {{ add 1 (div (int .Values.redis.sentinel.replicas) 2) }}"
      echo "sentinel down-after-milliseconds {{ $name }} {{ .Values.redis.sentinel.downAfterMs }}"
      echo "sentinel failover-timeout {{ $name }} {{ .Values.redis.sentinel.failoverTimeoutMs }}"
      echo "sentinel parallel-syncs {{ $name }} 1"
      if [ -n "$SENTINEL_PASSWORD" ]; then
        echo "sentinel auth-user {{ $name }} strata-sentinel"
        echo "sentinel auth-pass {{ $name }} $SENTINEL_PASSWORD"
      fi
    } > "$CONF"
    exec redis-server "$CONF" --sentinel
{{- end }}

{{- define "strata.redisSentinels" -}}
{{- $fullname := include "strata.fullname" . }}
---
# Sentinels: a majority agreeing that the primary is down promotes a replica; coordinators ask
# them where the primary is (redis-sentinel://…).
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $fullname }}-sentinel
  labels: {{- include "strata.componentLabels" (dict "root" . "component" "sentinel") | nindent 4 }}
spec:
  serviceName: {{ $fullname }}-sentinel-headless
  replicas: {{ .Values.redis.sentinel.replicas }}
  podManagementPolicy: Parallel
  selector:
    matchLabels: {{- include "strata.selectorLabels" (dict "root" . "component" "sentinel") | nindent 6 }}
  template:
    metadata:
      labels: {{- include "strata.componentLabels" (dict "root" . "component" "sentinel") | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        seccompProfile: { type: RuntimeDefault }
      {{- include "strata.spreadAffinity" (dict "root" . "component" "sentinel") | nindent 6 }}
      containers:
        - name: sentinel
          image: {{ .Values.redis.image.repository }}:{{ .Values.redis.image.tag }}
          imagePullPolicy: {{ .Values.redis.image.pullPolicy }}
          securityContext: {{- toYaml .Values.securityContext | nindent 12 }}
          command: [sh, /etc/redis-start/sentinel-start.sh]
          {{- if .Values.redis.auth.enabled }}
          env:
            - name: SENTINEL_PASSWORD
              valueFrom:
                secretKeyRef: { name: {{ $fullname }}-redis-auth, key: sentinel-password }
          {{- end }}
          ports:
            - { name: sentinel, containerPort: {{ .Values.redis.sentinel.port }}, protocol: TCP }
          readinessProbe:
            exec: { command: [sh, -c, 'redis-cli -p {{ .Values.redis.sentinel.port }} ping | grep -q PONG'] }
            periodSeconds: 5
            timeoutSeconds: 5
          livenessProbe:
            exec: { command: [sh, -c, 'redis-cli -p {{ .Values.redis.sentinel.port }} ping | grep -q PONG'] }
            periodSeconds: 10
            timeoutSeconds: 5
          volumeMounts:
            - { name: data, mountPath: /data }
            - { name: start, mountPath: /etc/redis-start, readOnly: true }
          resources: {{- toYaml .Values.redis.sentinel.resources | nindent 12 }}
      volumes:
        - name: data
          emptyDir: {}
        - name: start
          configMap: { name: {{ $fullname }}-redis-start }
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}-sentinel-headless
  labels: {{- include "strata.componentLabels" (dict "root" . "component" "sentinel") | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{- include "strata.selectorLabels" (dict "root" . "component" "sentinel") | nindent 4 }}
  ports:
    - { name: sentinel, port: {{ .Values.redis.sentinel.port }}, targetPort: sentinel, protocol: TCP }
{{- range $component := list "redis" "sentinel" }}
---
# One server (or sentinel) at a time: a drain never takes the primary and its replicas, or the
# sentinels' majority, together.
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullname }}-{{ $component }}
  labels: {{- include "strata.componentLabels" (dict "root" $ "component" $component) | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {{- include "strata.selectorLabels" (dict "root" $ "component" $component) | nindent 6 }}
{{- end }}
{{- end }}
