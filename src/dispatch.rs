//! Finding the route for a request and the target to forward, shared by the proxy and the
//! `gatehouse route` command so that both reach the same result.

use crate::config::{Route, RouteAction, RuntimeConfig};
use crate::path::{normalize, split_query, strip_segment_prefix, PathError};
use crate::routing::{normalize_host, RequestFacts};
use http::{HeaderMap, Method};
use std::borrow::Cow;
use std::sync::Arc;

/// The route a request matched and what to send upstream.
pub struct Dispatch<'a> {
    pub route: Arc<Route>,
    /// The normalized request path, without the query.
    pub normalized_path: Cow<'a, [u8]>,
    /// The request target for the upstream when it differs from the client's; None when the
    /// client's target is forwarded unchanged. Always None for `respond` routes.
    pub forward_target: Option<Vec<u8>>,
}

/// Routes a request. `target` is the origin-form request target (path and query) as the
/// client sent it; `host` is the raw Host value. Returns Ok(None) when no route matches.
pub fn dispatch<'a>(
    config: &RuntimeConfig,
    method: &Method,
    target: &'a [u8],
    host: &str,
    headers: &HeaderMap,
) -> Result<Option<Dispatch<'a>>, PathError> {
    let (path, query) = split_query(target);
    let normalized = normalize(path)?;
    let host = normalize_host(host);
    let facts = RequestFacts {
        method,
        host: &host,
        path: &normalized,
        headers,
    };
    let Some(route) = config.route_index.first_match(&config.routes, &facts) else {
        return Ok(None);
    };

    let mut forward_target = None;
    if let RouteAction::Proxy(_) = route.action {
        let forwarded_path: &[u8] = match &route.strip_prefix {
            Some(prefix) => strip_segment_prefix(&normalized, prefix).unwrap_or(&normalized),
            None => &normalized,
        };
        if forwarded_path != path {
            let mut forward = Vec::with_capacity(forwarded_path.len() + query.len());
            forward.extend_from_slice(forwarded_path);
            forward.extend_from_slice(query);
            forward_target = Some(forward);
        }
    }
    Ok(Some(Dispatch {
        route: route.clone(),
        normalized_path: normalized,
        forward_target,
    }))
}
