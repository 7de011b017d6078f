//! The pod template of a rendered Kubernetes StatefulSet, to run its pods as containers.
//!
//! Reads the objects `kubectl kustomize` renders (as JSON: a list of objects), finds the
//! StatefulSet running `cascade` and the ConfigMaps it reads, and gives, for each ordinal,
//! what Kubernetes would give that pod: its name and host name (`<set>-<ordinal>`), the DNS
//! names its headless Service makes for it, its arguments and environment with the downward
//! API's `metadata.name` and `metadata.namespace` filled in and `$(VAR)` references expanded
//! as the kubelet does, and the grace period SIGTERM gets. Nothing else of the spec is
//! interpreted; what the emulation leaves out is listed in docs/kubernetes.md.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One container's template, as the StatefulSet describes it.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// The StatefulSet's name (pods are `<name>-<ordinal>`).
    pub name: String,
    /// Its headless Service.
    pub service: String,
    /// Its namespace (`default` when the manifest names none).
    pub namespace: String,
    /// Its replica count.
    pub replicas: u32,
    /// The container's arguments, unexpanded.
    pub args: Vec<String>,
    /// The container's environment in Kubernetes' order (ConfigMaps of `envFrom` first, then
    /// `env`, which wins), unexpanded.
    env: Vec<(String, EnvValue)>,
    /// `terminationGracePeriodSeconds` (Kubernetes' default 30).
    pub grace_secs: u64,
}

#[derive(Debug, Clone)]
enum EnvValue {
    Literal(String),
    PodName,
    PodNamespace,
}

/// What one pod gets.
#[derive(Debug, Clone)]
pub struct Pod {
    /// `<set>-<ordinal>`, also its host name.
    pub name: String,
    /// Names other pods resolve it by: `<pod>.<service>`, `.<ns>.svc`, `.svc.cluster.local`.
    pub aliases: Vec<String>,
    /// Arguments, expanded.
    pub args: Vec<String>,
    /// Environment, expanded.
    pub env: Vec<(String, String)>,
}

impl PodTemplate {
    /// Reads the StatefulSet running `cascade` from rendered objects (a JSON list).
    pub fn from_rendered(json: &str) -> Result<Self> {
        let docs: Vec<Value> =
            serde_json::from_str(json).context("parsing the rendered objects")?;
        let str_at = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        let set = docs
            .iter()
            .find(|d| str_at(d, "/kind").as_deref() == Some("StatefulSet"))
            .context("no StatefulSet among the rendered objects")?;
        let name = str_at(set, "/metadata/name").context("the StatefulSet has no name")?;
        let namespace = str_at(set, "/metadata/namespace").unwrap_or_else(|| "default".into());
        let service = str_at(set, "/spec/serviceName").context("no spec.serviceName")?;
        let replicas = set
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as u32;
        let spec = set
            .pointer("/spec/template/spec")
            .context("no pod template")?;
        let grace_secs = spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let container = spec
            .get("containers")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .context("the pod template has no container")?;
        let args: Vec<String> = container
            .get("args")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut env = Vec::new();
        for from in container
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(cm) = str_at(from, "/configMapRef/name") else {
                bail!("only envFrom.configMapRef is emulated, got {from}");
            };
            let data = docs
                .iter()
                .find(|d| {
                    str_at(d, "/kind").as_deref() == Some("ConfigMap")
                        && str_at(d, "/metadata/name").as_deref() == Some(cm.as_str())
                })
                .and_then(|d| d.get("data"))
                .and_then(Value::as_object)
                .with_context(|| format!("envFrom names ConfigMap {cm}, which is not rendered"))?;
            for (k, v) in data {
                let v = v.as_str().context("ConfigMap values are strings")?;
                env.push((k.clone(), EnvValue::Literal(v.to_string())));
            }
        }
        for e in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = str_at(e, "/name").context("an env entry without a name")?;
            let value = if let Some(v) = str_at(e, "/value") {
                EnvValue::Literal(v)
            } else {
                match str_at(e, "/valueFrom/fieldRef/fieldPath").as_deref() {
                    Some("metadata.name") => EnvValue::PodName,
                    Some("metadata.namespace") => EnvValue::PodNamespace,
                    other => bail!(
                        "env {key}: only literal values, metadata.name and metadata.namespace are emulated, got {other:?}"
                    ),
                }
            };
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        Ok(Self {
            name,
            service,
            namespace,
            replicas,
            args,
            env,
            grace_secs,
        })
    }

    /// What the pod with this ordinal gets.
    pub fn pod(&self, ordinal: u32) -> Pod {
        let name = format!("{}-{ordinal}", self.name);
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.env {
            let value = match v {
                // The kubelet expands references to variables defined before this one.
                EnvValue::Literal(s) => expand(s, &env),
                EnvValue::PodName => name.clone(),
                EnvValue::PodNamespace => self.namespace.clone(),
            };
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), value));
        }
        let args = self.args.iter().map(|a| expand(a, &env)).collect();
        let base = format!("{name}.{}", self.service);
        let aliases = vec![
            base.clone(),
            format!("{base}.{}.svc", self.namespace),
            format!("{base}.{}.svc.cluster.local", self.namespace),
        ];
        Pod {
            name,
            aliases,
            args,
            env,
        }
    }
}

/// Kubernetes' `$(VAR)` expansion: a reference to a known variable is replaced, `$$` is a
/// literal `$`, anything else is left as it is.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().find(|(k, _)| k == &inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = r#"[
      {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
       "data": {"CASCADE_SEEDS": "c-0.h:50051,c-1.h:50051", "X": "from-map"}},
      {"apiVersion": "apps/v1", "kind": "StatefulSet",
       "metadata": {"name": "c", "namespace": "ns"},
       "spec": {"serviceName": "h", "replicas": 2, "template": {"spec": {
         "terminationGracePeriodSeconds": 60,
         "containers": [{"name": "cascade", "image": "cascade:1",
           "args": ["server", "--advertised-grpc-addr=$(POD_NAME).h.$(POD_NAMESPACE).svc:50051", "$$(POD_NAME)", "$(UNKNOWN)"],
           "envFrom": [{"configMapRef": {"name": "cfg"}}],
           "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                   {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                   {"name": "X", "value": "$(POD_NAME)-x"}]}]}}}}
    ]"#;

    /// Each pod gets its name, its headless names, and its arguments and environment with
    /// the downward API filled in and references expanded as the kubelet does (env wins over
    /// envFrom; `$$` escapes; an unknown reference stays).
    #[test]
    fn a_pod_gets_what_kubernetes_would_give_it() {
        let t = PodTemplate::from_rendered(RENDERED).unwrap();
        assert_eq!((t.replicas, t.grace_secs), (2, 60));
        let p = t.pod(1);
        assert_eq!(p.name, "c-1");
        assert_eq!(
            p.aliases,
            ["c-1.h", "c-1.h.ns.svc", "c-1.h.ns.svc.cluster.local"]
        );
        assert_eq!(
            p.args,
            [
                "server",
                "--advertised-grpc-addr=c-1.h.ns.svc:50051",
                "$(POD_NAME)",
                "$(UNKNOWN)"
            ]
        );
        let get = |k: &str| {
            p.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("X"), Some("c-1-x"));
        assert_eq!(get("CASCADE_SEEDS"), Some("c-0.h:50051,c-1.h:50051"));
        assert_eq!(get("POD_NAMESPACE"), Some("ns"));
    }

    #[test]
    fn what_is_not_emulated_is_refused() {
        let bad = RENDERED.replace("metadata.namespace", "status.podIP");
        let e = PodTemplate::from_rendered(&bad).unwrap_err().to_string();
        assert!(e.contains("status.podIP"), "{e}");
        assert!(PodTemplate::from_rendered("[]").is_err());
    }
}
