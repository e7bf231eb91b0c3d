//! The decision cache: decisions kept per worker under a CEL key plus the
//! request's method, host and path, for `ttl`.

// The policy's own types and imports: this is its code, kept apart.
use super::*;

/// Decisions kept per worker, keyed by a CEL expression over the request
/// (`request.headers["authorization"]`), each for `ttl`. Bounded: when full,
/// expired entries go first, then the oldest. A key that cannot be
/// evaluated is not cached: the service is asked.
pub(crate) struct DecisionCache {
    key: Expression,
    ttl_millis: u64,
    max_entries: usize,
    entries: Mutex<HashMap<String, (u64, Decision)>>,
}

impl DecisionCache {
    /// The connection attributes its key reads.
    pub(crate) fn attributes(&self) -> AttributeSet {
        self.key.attributes()
    }

    pub(crate) fn build(params: CacheParams) -> Result<Self, ParamError> {
        let key = Expression::compile(&params.key, Phase::Request)
            .map_err(|e| ParamError::at("cache.key", e))?;
        let ttl = parse_duration(&params.ttl).ok_or_else(|| {
            ParamError::at(
                "cache.ttl",
                format!("{:?} is not a duration like 30s or 5m", params.ttl),
            )
        })?;
        let max_entries = params.max_entries.unwrap_or(10_000);
        if max_entries == 0 {
            return Err(ParamError::at("cache.max_entries", "must be at least 1"));
        }
        Ok(Self {
            key,
            ttl_millis: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            max_entries,
            entries: Mutex::default(),
        })
    }

    /// The user's key, with what every decision depends on: the method,
    /// host and path (query included) of the request. A decision for
    /// `GET /orders/1` is never replayed for `DELETE /orders/2`.
    pub(crate) fn key_of(&self, cx: &Context) -> Option<String> {
        let request = cx.request_headers();
        match self.key.evaluate_text(cx) {
            Ok(Some(key)) => Some(format!(
                "{}\n{}\n{}\n{key}",
                request.get(":method").unwrap_or_default(),
                request.get(":authority").unwrap_or_default(),
                request.get(":path").unwrap_or_default()
            )),
            Ok(None) => None,
            Err(error) => {
                log::debug!(
                    "ext-authz: the cache key cannot be evaluated ({error}): asking the service"
                );
                None
            }
        }
    }

    pub(crate) fn lookup(&self, cx: &Context) -> Option<Decision> {
        let key = self.key_of(cx)?;
        let now = cx.now_millis();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, decision) = entries.get(&key)?;
        (*expires > now).then(|| decision.clone())
    }

    pub(crate) fn store(&self, cx: &Context, decision: Decision) {
        let Some(key) = self.key_of(cx) else {
            return;
        };
        let now = cx.now_millis();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, (now.saturating_add(self.ttl_millis), decision));
    }
}
