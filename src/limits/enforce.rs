//! The limits phase of `request_filter`: request body size (413), the route's rate limit
//! (429) and its in-flight cap (503), checked in that order before any upstream work.

use crate::config::RateLimitKey;
use crate::context::RequestContext;
use crate::errors::write_error_with_headers;
use crate::limits::rate::RateDecision;
use crate::metrics::metrics;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora_error::Result;
use pingora_proxy::Session;
use std::time::Duration;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Returns the request's declared body length, if it sent a valid `Content-Length`.
fn content_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whole seconds until `wait` has passed, at least 1, as `Retry-After` takes.
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

fn rate_limit_check(
    session: &Session,
    ctx: &RequestContext,
    key: &RateLimitKey,
    limiter: &crate::limits::rate::RateLimiter,
) -> RateDecision {
    // Keys are tagged by kind so a header value that spells an address never shares a count
    // with that address.
    match key {
        RateLimitKey::Route => limiter.check(&0u8),
        RateLimitKey::ClientIp => limiter.check(&(1u8, ctx.client_ip)),
        RateLimitKey::Header(name) => match session.req_header().headers.get(name) {
            Some(value) => limiter.check(&(2u8, value.as_bytes())),
            None => limiter.check(&(1u8, ctx.client_ip)),
        },
    }
}

/// Applies the limits to a routed request. Returns true when a rejection was sent, which
/// ends the request. A rejected request with a body closes its connection, so that unread
/// body bytes are never parsed as a next request.
pub async fn enforce(session: &mut Session, ctx: &mut RequestContext) -> Result<bool> {
    let route = ctx.route.clone().expect("limits run on routed requests");
    let has_body = !session.is_body_empty();

    if let (Some(max), Some(length)) = (ctx.config.max_request_body, content_length(session)) {
        if length > max {
            write_error_with_headers(
                session,
                StatusCode::PAYLOAD_TOO_LARGE,
                &[],
                ctx.request_id.as_ref(),
                true,
            )
            .await?;
            return Ok(true);
        }
    }

    if let Some(rate_limit) = &route.rate_limit {
        let decision = rate_limit_check(session, ctx, &rate_limit.key, &rate_limit.limiter);
        if !decision.allowed {
            metrics()
                .rate_limited_total
                .with_label_values(&[route.name.as_str()])
                .inc();
            let seconds = retry_after_seconds(decision.reset_after);
            let policy_name = rate_limit
                .policy_header
                .to_str()
                .ok()
                .and_then(|p| p.split(';').next())
                .unwrap_or("\"default\"");
            let state = format!("{policy_name};r=0;t={seconds}");
            let headers = [
                (header::RETRY_AFTER, HeaderValue::from(seconds)),
                (RATELIMIT_POLICY.clone(), rate_limit.policy_header.clone()),
                (
                    RATELIMIT.clone(),
                    HeaderValue::from_str(&state).expect("ASCII policy state"),
                ),
            ];
            write_error_with_headers(
                session,
                StatusCode::TOO_MANY_REQUESTS,
                &headers,
                ctx.request_id.as_ref(),
                has_body,
            )
            .await?;
            return Ok(true);
        }
    }

    match route.in_flight.try_acquire() {
        Some(permit) => ctx.route_permit = Some(permit),
        None => {
            let headers = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
            write_error_with_headers(
                session,
                StatusCode::SERVICE_UNAVAILABLE,
                &headers,
                ctx.request_id.as_ref(),
                has_body,
            )
            .await?;
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
