{{/*
Names. The proxy's own objects are named "<release>-proxy" (not the usual "<release>-<chart>" shortened to
the release name): lbproxy names the worker Deployments "<endpoint>" or "<endpoint>-<gpu category>", and the
endpoint name defaults to the release name, so the proxy must never take a name of that form.
*/}}
{{- define "lbproxy.name" -}}
{{- default .Chart.Name .Values.proxy.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lbproxy.fullname" -}}
{{- if .Values.proxy.fullnameOverride -}}
{{- .Values.proxy.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-proxy" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lbproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A derived name "<fullname>-<suffix>", kept within 63 characters. */}}
{{- define "lbproxy.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- printf "%s-%s" (include "lbproxy.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix -}}
{{- end -}}

{{/*
Labels. The proxy's pods never carry lbproxy.io/endpoint: that label selects the endpoint's worker pods (the
backend watches them, and `kubectl delete deploy -l lbproxy.io/endpoint=<name>` removes the workers only).
*/}}
{{- define "lbproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lbproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- define "lbproxy.labels" -}}
{{ include "lbproxy.labelsFor" (list . "proxy") }}
{{- end -}}

{{/* The labels of every object, for one component: proxy, cleanup (uninstall hook) or test. */}}
{{- define "lbproxy.labelsFor" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "lbproxy.chart" $root }}
app.kubernetes.io/name: {{ include "lbproxy.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: lbproxy
{{- end -}}

{{/* backend.proxy_selector: exactly this release's proxy pods (the leader sums their load). */}}
{{- define "lbproxy.proxySelector" -}}
{{- $parts := list -}}
{{- range $key, $value := include "lbproxy.selectorLabels" . | fromYaml -}}
{{- $parts = append $parts (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," (sortAlpha $parts) -}}
{{- end -}}

{{- define "lbproxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "lbproxy.fullname" .) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "lbproxy.image" -}}
{{- $image := .Values.proxy.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The endpoint: name (default: the release name), and settings whose lbproxy default is true. */}}
{{- define "lbproxy.endpointName" -}}
{{- default .Release.Name .Values.name -}}
{{- end -}}

{{- define "lbproxy.flashboot" -}}
{{- if or (not (hasKey .Values "flashboot")) (kindIs "invalid" .Values.flashboot) .Values.flashboot }}true{{ end -}}
{{- end -}}

{{- define "lbproxy.leaderElection" -}}
{{- $backend := .Values.backend | default dict -}}
{{- if or (not (hasKey $backend "leader_election")) (kindIs "invalid" $backend.leader_election) $backend.leader_election }}true{{ end -}}
{{- end -}}

{{/* The port of a listen/admin address: 8080, ":8080", "0.0.0.0:8080" or "[::]:8080". */}}
{{- define "lbproxy.port" -}}
{{- toString . | splitList ":" | last | trim | int -}}
{{- end -}}

{{- define "lbproxy.listenPort" -}}
{{- include "lbproxy.port" (default "0.0.0.0:8080" .Values.listen) -}}
{{- end -}}

{{- define "lbproxy.adminPort" -}}
{{- include "lbproxy.port" (default "0.0.0.0:9090" .Values.admin) -}}
{{- end -}}

{{/* Seconds (rounded up) from an lbproxy duration: 30, "30", "500ms", "5s", "10m", "24h", "7d", "1h30m". */}}
{{- define "lbproxy.seconds" -}}
{{- $text := . | toString | trim | lower -}}
{{- $total := 0.0 -}}
{{- if regexMatch "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$" $text -}}
{{- $total = float64 $text -}}
{{- else -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- range regexFindAll "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ms|s|m|h|d)" $text -1 -}}
{{- $unit := regexFind "(ms|s|m|h|d)$" . -}}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit .)) (get $units $unit)) -}}
{{- end -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{/* The names of the worker Deployments lbproxy creates (lbproxy.kube.manifests.pools), for resourceNames. */}}
{{- define "lbproxy.workerDeployments" -}}
{{- $endpoint := include "lbproxy.endpointName" . -}}
{{- $gpu := .Values.gpu | default dict -}}
{{- $names := list -}}
{{- range $gpu.categories | default list -}}
{{- $names = append $names (include "lbproxy.poolName" (printf "%s-%s" $endpoint .)) -}}
{{- else -}}
{{- $names = list (include "lbproxy.poolName" $endpoint) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* A pool's name kept short enough for its pods' names (manifests._name): cut and hashed past 52 characters. */}}
{{- define "lbproxy.poolName" -}}
{{- if gt (len .) 52 -}}
{{- printf "%s-%s" (regexReplaceAll "-+$" (. | trunc 43) "") (. | sha256sum | trunc 8) -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Queue endpoints: "true" when type is queue; the SQLite store (not PostgreSQL) when "sqlite" is "true". */}}
{{- define "lbproxy.isQueue" -}}
{{- if eq (toString .Values.type) "queue" }}true{{ end -}}
{{- end -}}

{{- define "lbproxy.queueSqlite" -}}
{{- $queue := .Values.queue | default dict -}}
{{- $store := toString (default "" $queue.store) -}}
{{- if and (include "lbproxy.isQueue" .) (not .Values.proxy.queue.storeSecret.name) (not (regexMatch "^postgres(ql)?:" $store)) }}true{{ end -}}
{{- end -}}

{{/* SDK workers pull jobs from the worker API (queue.delivery: http pushes them instead). */}}
{{- define "lbproxy.queueWorkerApi" -}}
{{- $queue := .Values.queue | default dict -}}
{{- if and (include "lbproxy.isQueue" .) (ne (toString (default "sdk" $queue.delivery)) "http") }}true{{ end -}}
{{- end -}}

{{- define "lbproxy.workerApiUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "lbproxy.suffixed" (list . "worker-api")) .Release.Namespace (int .Values.proxy.queue.workerApiPort) -}}
{{- end -}}

{{/* Who holds LBPROXY_API_KEYS: an existing Secret, or the chart's own (from auth.api_keys or generated). */}}
{{- define "lbproxy.apiKeysSecretName" -}}
{{- default (include "lbproxy.suffixed" (list . "api-keys")) .Values.proxy.apiKeys.existingSecret -}}
{{- end -}}

{{- define "lbproxy.apiKeysSecretKey" -}}
{{- if .Values.proxy.apiKeys.existingSecret -}}
{{- .Values.proxy.apiKeys.existingSecretKey -}}
{{- else -}}
api-keys
{{- end -}}
{{- end -}}

{{- define "lbproxy.apiKeysFromValues" -}}
{{- $auth := .Values.auth | default dict -}}
{{- join "," ($auth.api_keys | default list) -}}
{{- end -}}

{{- define "lbproxy.hasApiKeys" -}}
{{- if or .Values.proxy.apiKeys.existingSecret (include "lbproxy.apiKeysFromValues" .) .Values.proxy.apiKeys.generate }}true{{ end -}}
{{- end -}}

{{/*
The endpoint's config file: the values without the chart's `proxy` block, plus what the cluster needs. API
keys stay out of it (they reach the proxy as LBPROXY_API_KEYS from a Secret).
*/}}
{{- define "lbproxy.config" -}}
{{- $config := omit .Values "proxy" "global" | deepCopy -}}
{{- $_ := set $config "name" (include "lbproxy.endpointName" .) -}}
{{- $auth := $config.auth | default dict -}}
{{- $_ := unset $auth "api_keys" -}}
{{- if $auth -}}
{{- $_ := set $config "auth" $auth -}}
{{- else -}}
{{- $_ := unset $config "auth" -}}
{{- end -}}
{{- $backend := $config.backend | default dict -}}
{{- $_ := set $backend "type" "kubernetes" -}}
{{- $_ := set $backend "proxy_selector" (include "lbproxy.proxySelector" .) -}}
{{- $_ := set $config "backend" $backend -}}
{{- if include "lbproxy.queueWorkerApi" . -}}
{{- $queue := $config.queue | default dict -}}
{{- $_ := set $queue "worker_listen" (printf "0.0.0.0:%d" (int .Values.proxy.queue.workerApiPort)) -}}
{{- $_ := set $queue "worker_url" (include "lbproxy.workerApiUrl" .) -}}
{{- $_ := set $queue "worker_key_secret" (include "lbproxy.suffixed" (list . "worker-key")) -}}
{{- $_ := set $config "queue" $queue -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Checks the schema cannot express; a failure stops `helm install` before anything is created. */}}
{{- define "lbproxy.validate" -}}
{{- $endpoint := include "lbproxy.endpointName" . -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $endpoint) -}}
{{- fail (printf "name: the endpoint name %q (default: the release name) must be a DNS-1123 label: lowercase letters, digits and '-', at most 63 characters" $endpoint) -}}
{{- end -}}
{{- $backend := .Values.backend | default dict -}}
{{- if and $backend.namespace (ne $backend.namespace .Release.Namespace) -}}
{{- fail (printf "backend.namespace: %q differs from the release namespace %q; install the release there (helm install -n %s) or remove backend.namespace: lbproxy keeps its Lease and finds its peer replicas in the workers' namespace" $backend.namespace .Release.Namespace $backend.namespace) -}}
{{- end -}}
{{- $adminHost := default "0.0.0.0:9090" .Values.admin | toString | splitList ":" | initial | join ":" | trimAll "[]" -}}
{{- if or (hasPrefix "127." $adminHost) (eq $adminHost "::1") (eq $adminHost "localhost") -}}
{{- fail (printf "admin: %s is loopback; on Kubernetes the kubelet probes /readyz and /healthz and the leading replica polls its peers on the admin port, so bind it to all interfaces (admin: 0.0.0.0:%s)" (toString .Values.admin) (include "lbproxy.adminPort" .)) -}}
{{- end -}}
{{- if eq (include "lbproxy.listenPort" .) (include "lbproxy.adminPort" .) -}}
{{- fail (printf "admin: must not use the proxy's port %s (listen)" (include "lbproxy.listenPort" .)) -}}
{{- end -}}
{{- $fullname := include "lbproxy.fullname" . -}}
{{- if or (has $fullname (include "lbproxy.workerDeployments" . | fromJsonArray)) (eq $fullname (printf "%s-workers" $endpoint)) -}}
{{- fail (printf "proxy.fullnameOverride: %q is the name of one of endpoint %s's worker Deployments or Services; choose another" $fullname $endpoint) -}}
{{- end -}}
{{- if and (include "lbproxy.queueSqlite" .) (gt (int .Values.proxy.replicas) 1) -}}
{{- fail (printf "queue.store: SQLite keeps the queue in one proxy's volume, so it cannot serve proxy.replicas: %d; set proxy.replicas: 1, or give a postgresql:// store (proxy.queue.storeSecret) that every replica shares" (int .Values.proxy.replicas)) -}}
{{- end -}}
{{- $queue := .Values.queue | default dict -}}
{{- if and (include "lbproxy.isQueue" .) (regexMatch "^postgres(ql)?://[^/@]*:[^/@]*@" (toString (default "" $queue.store))) -}}
{{- fail "queue.store: holds a password, which would land in the ConfigMap; put the URL in a Secret and name it in proxy.queue.storeSecret" -}}
{{- end -}}
{{- if and .Values.proxy.apiKeys.existingSecret (include "lbproxy.apiKeysFromValues" .) -}}
{{- fail "auth.api_keys and proxy.apiKeys.existingSecret are both set; keep the keys in one place" -}}
{{- end -}}
{{- end -}}
