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

{{/* The NATS servers every service connects to: each node of the chart's cluster, or natsUrls; with natsUsers,
as the services' user `switchyard` (its password comes from the Secret, never in a URL). */}}
{{- define "switchyard.natsUrl" -}}
{{- $user := ternary "switchyard@" "" .Values.natsUsers.enabled -}}
{{- $urls := list -}}
{{- if .Values.nats.enabled -}}
{{- $nats := ternary .Release.Name (printf "%s-nats" .Release.Name) (contains "nats" .Release.Name) -}}
{{- range $i := until (int .Values.nats.config.cluster.replicas) -}}
{{- $urls = append $urls (printf "nats://%s%s-%d.%s-headless:4222" $user $nats $i $nats) -}}
{{- end -}}
{{- else -}}
{{- range $url := .Values.natsUrls -}}
{{- $url = ternary $url (printf "nats://%s" $url) (contains "://" $url) -}}
{{- $urls = append $urls (ternary $url (replace "://" (printf "://%s" $user) $url) (contains "@" $url)) -}}
{{- end -}}
{{- end -}}
{{- required "natsUrls: list the servers of the NATS cluster (or set nats.enabled)" (join "," $urls) -}}
{{- end -}}

{{/* A subscriber's NATS allow lists: exactly what `permissions` in libs/kit/nats_auth.py gives (the chart's
tests hold the two equal): its own door to metering (its tenant's, or every tenant's) and its own inbox. */}}
{{- define "switchyard.natsPermissions" -}}
{{- $door := printf "metering.subscriber.v1.%s.%s.%s.*" .user .name (.tenant | default "*") -}}
{{- dict "publish" (dict "allow" (list $door)) "subscribe" (dict "allow" (list (printf "_INBOX_%s.>" .user))) | toRawJson -}}
{{- end -}}

{{/* Whether a value is a whole bcrypt hash as nats-server takes one (nats_auth.BCRYPT: the chart's tests hold the
two equal); anything else nats-server would compare as a password in plain text. */}}
{{- define "switchyard.isBcrypt" -}}
{{- if regexMatch "^\\$2[abxy]\\$[0-9]{2}\\$[./A-Za-z0-9]{53}$" (toString .) }}true{{ end -}}
{{- end -}}

{{/* The gateways' JWT secret, which signs sign-in's tokens: at least 32 bytes, as the gateway asks
(JWT_SECRET_MIN_BYTES in services/gateway/settings.py: a shorter one is recovered offline from any token). */}}
{{- define "switchyard.jwtSecret" -}}
{{- $secret := required "secrets.jwtSecret or secrets.existingSecret is required (sign-in's tokens)" .Values.secrets.jwtSecret -}}
{{- if lt (len $secret) 32 }}{{ fail "secrets.jwtSecret: give at least 32 bytes (openssl rand -hex 32)" }}{{ end -}}
{{- $secret -}}
{{- end -}}

{{/* The bcrypt hash NATS checks the services' password against: given, or made from secrets.natsPassword. */}}
{{- define "switchyard.natsPasswordHash" -}}
{{- with .Values.secrets -}}
{{- if .natsPasswordHash -}}
{{- if not (include "switchyard.isBcrypt" .natsPasswordHash) }}{{ fail "secrets.natsPasswordHash: a bcrypt hash ($2a$...)" }}{{ end -}}
{{- .natsPasswordHash -}}
{{- else if .existingSecret -}}
{{- fail "secrets.natsPasswordHash is required with secrets.existingSecret and natsUsers: the bcrypt hash of its nats-password" -}}
{{- else -}}
{{- $password := required "secrets.natsPassword or secrets.existingSecret is required (natsUsers)" .natsPassword -}}
{{- if lt (len $password) 16 }}{{ fail "secrets.natsPassword: give at least 16 characters" }}{{ end -}}
{{- bcrypt $password -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The routes the chart's NATS nodes dial, as the JSON list the environment variable SWITCHYARD_NATS_ROUTE_URLS
holds: the NATS chart's own route URLs (names, port, tls, useFQDN as its files/config/cluster.yaml makes them)
with the routes' user and the password as a reference Kubernetes fills in from SWITCHYARD_NATS_ROUTE_PASSWORD,
which comes first in the container's env. nats-server reads the list through `routes: $SWITCHYARD_NATS_ROUTE_URLS`
(its variables are whole values only: a `$VAR` inside a URL stays as it is). Rendered by the NATS chart (values:
nats.container.env), in its context. */}}
{{- define "switchyard.natsRouteUrls" -}}
{{- $cluster := .Values.config.cluster -}}
{{- $user := $cluster.merge.authorization.user -}}
{{- $proto := ternary "tls" "nats" $cluster.tls.enabled -}}
{{- $domain := .Values.headlessService.name -}}
{{- if $cluster.routeURLs.useFQDN -}}
{{- $domain = printf "%s.%s.svc.%s" $domain (include "nats.namespace" .) $cluster.routeURLs.k8sClusterDomain -}}
{{- end -}}
{{- $urls := list -}}
{{- range $i := until (int $cluster.replicas) -}}
{{- $urls = append $urls (printf "%s://%s:$(SWITCHYARD_NATS_ROUTE_PASSWORD)@%s-%d.%s:%d" $proto $user $.Values.statefulSet.name $i $domain (int $cluster.port)) -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}

{{/* The routes' password is read by the NATS nodes (a subchart, which cannot see secrets.existingSecret) from the
Secret nats.container.env names: with existingSecret, that must be named there too. Made by the chart, it is
at least 16 characters of A-Z a-z 0-9 . _ ~ - (it goes into the route URLs as it is). */}}
{{- define "switchyard.natsRouteCheck" -}}
{{- if .Values.nats.enabled -}}
{{- $name := dig "container" "env" "SWITCHYARD_NATS_ROUTE_PASSWORD" "valueFrom" "secretKeyRef" "name" "" .Values.nats -}}
{{- if .Values.secrets.existingSecret -}}
{{- if ne (toString $name) .Values.secrets.existingSecret -}}
{{- fail (printf "secrets.existingSecret: the NATS nodes read the routes' password (key nats-route-password) from it too: set nats.container.env.SWITCHYARD_NATS_ROUTE_PASSWORD.valueFrom.secretKeyRef.name=%s" .Values.secrets.existingSecret) -}}
{{- end -}}
{{- else -}}
{{- $password := required "secrets.natsRoutePassword or secrets.existingSecret is required (the routes between the NATS nodes)" .Values.secrets.natsRoutePassword -}}
{{- if lt (len $password) 16 }}{{ fail "secrets.natsRoutePassword: give at least 16 characters" }}{{ end -}}
{{- if not (regexMatch "^[A-Za-z0-9._~-]+$" $password) }}{{ fail "secrets.natsRoutePassword: only A-Z a-z 0-9 . _ ~ - (openssl rand -hex 24)" }}{{ end -}}
{{- end -}}
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
        {{- if $root.Values.natsUsers.enabled }}
        - name: SWITCHYARD_NATS_PASSWORD_FILE
          value: /run/secrets/switchyard/nats-password
        {{- end }}
        {{- if eq .service "gateway" }}
        - name: SWITCHYARD_JWT_SECRET_FILE
          value: /run/secrets/switchyard/jwt-secret
        - name: SWITCHYARD_WORKERS        # unset, a pod would start one worker per CPU of the node
          value: {{ $root.Values.services.gateway.workers | quote }}
        {{- end }}
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
          {{- if $root.Values.natsUsers.enabled }}
          - {key: nats-password, path: nats-password}
          {{- end }}
          {{- if eq .service "registry" }}
          - {key: admin-key, path: admin-key}
          {{- end }}
          {{- if eq .service "gateway" }}
          - {key: jwt-secret, path: jwt-secret}
          {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if and (eq .service "registry") $root.Values.registryDocument }}
    - name: registry-document
      configMap:
        name: {{ include "switchyard.fullname" $root }}-registry-document
    {{- end }}
{{- end -}}
