{{/* Names, labels and the pieces every workload shares. */}}

{{- define "switchyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "switchyard.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "switchyard.fullname" .)) -}}
{{- end -}}

{{/* The NATS servers every service connects to: each node of the chart's cluster, or natsUrls. */}}
{{- define "switchyard.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- $nats := ternary .Release.Name (printf "%s-nats" .Release.Name) (contains "nats" .Release.Name) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.nats.config.cluster.replicas) -}}
{{- $urls = append $urls (printf "nats://%s-%d.%s-headless:4222" $nats $i $nats) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- required "natsUrls: list the servers of the NATS cluster (or set nats.enabled)" (join "," .Values.natsUrls) -}}
{{- end -}}
{{- end -}}

{{/* One service's pod template: the image's command for it, env from the ConfigMap, secrets as files. */}}
{{- define "switchyard.podTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "switchyard.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .service }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    fsGroup: 10001
  terminationGracePeriodSeconds: 30
  containers:
    - name: {{ .service }}
      image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}"
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["python", "-m", "switchyard_gateway.services.{{ .service }}"]
      ports:
        - {name: http, containerPort: 8080, protocol: TCP}
      envFrom:
        - configMapRef:
            name: {{ include "switchyard.fullname" $root }}
      env:
        - name: SWITCHYARD_INSTANCE
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: SWITCHYARD_DATABASE_PASSWORD_FILE
          value: /run/secrets/switchyard/database-password
        {{- if eq .service "registry" }}
        - name: SWITCHYARD_ADMIN_KEY_FILE
          value: /run/secrets/switchyard/admin-key
        {{- if $root.Values.registryDocument }}
        - name: SWITCHYARD_REGISTRY_DOCUMENT
          value: /etc/switchyard/switchyard.yaml
        {{- end }}
        {{- end }}
      # Liveness and readiness ask about this process only (/health/live): an upstream being down must
      # not restart gateways or take them out of the Service. /health has the whole picture.
      livenessProbe:
        httpGet: {path: /health/live, port: http}
        initialDelaySeconds: 10
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /health/live, port: http}
        periodSeconds: 5
        timeoutSeconds: 3
      startupProbe:
        httpGet: {path: /health/live, port: http}
        periodSeconds: 2
        failureThreshold: 60
      resources:
        {{- toYaml (index $root.Values.services .service).resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: secrets, mountPath: /run/secrets/switchyard, readOnly: true}
        - {name: tmp, mountPath: /tmp}
        {{- if eq .service "gateway" }}
        - {name: spool, mountPath: /var/lib/switchyard/spool}
        {{- end }}
        {{- if and (eq .service "registry") $root.Values.registryDocument }}
        - {name: registry-document, mountPath: /etc/switchyard, readOnly: true}
        {{- end }}
  volumes:
    - name: secrets
      secret:
        secretName: {{ include "switchyard.secretName" $root }}
        items:
          - {key: database-password, path: database-password}
          {{- if eq .service "registry" }}
          - {key: admin-key, path: admin-key}
          {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if and (eq .service "registry") $root.Values.registryDocument }}
    - name: registry-document
      configMap:
        name: {{ include "switchyard.fullname" $root }}-registry-document
    {{- end }}
{{- end -}}
