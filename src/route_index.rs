//! An index over the route table, so that finding a request's route costs about the same with
//! 10 routes as with 10,000.
//!
//! Routes with an exact `path` are looked up by that path, and routes with a `path_prefix` by
//! each segment prefix of the request path (`/`, `/a`, `/a/b` for `/a/b`), so a lookup makes
//! one hash lookup per path segment. Routes without a path condition or with a `path_regex`
//! are candidates for every request. The candidates are visited in file order, and the first
//! whose whole `match` applies wins, so the result is the route that trying every route in
//! order would find.
//! A request still tries every candidate of its path, so many routes on one path (differing
//! only by host, say) are tried one by one.

use crate::config::Route;
use crate::routing::{PathMatch, RequestFacts};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

type Positions = Vec<u32>;

/// Route positions (in file order) by the path they match.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: HashMap<Box<[u8]>, Positions, ahash::RandomState>,
    prefix: HashMap<Box<[u8]>, Positions, ahash::RandomState>,
    /// Routes that every request has to try: no path condition, or a regex.
    unindexed: Positions,
}

impl RouteIndex {
    pub fn build(routes: &[Arc<Route>]) -> Self {
        let mut index = RouteIndex::default();
        for (position, route) in routes.iter().enumerate() {
            let position = u32::try_from(position).expect("fewer than 2^32 routes");
            match &route.matcher.path {
                PathMatch::Exact(path) => index
                    .exact
                    .entry(path.clone().into_boxed_slice())
                    .or_default()
                    .push(position),
                PathMatch::Prefix(prefix) => index
                    .prefix
                    .entry(prefix.clone().into_boxed_slice())
                    .or_default()
                    .push(position),
                PathMatch::Any | PathMatch::Regex(_) => index.unindexed.push(position),
            }
        }
        index
    }

    /// Returns the first route of `routes` in file order that matches `request`. `routes` must
    /// be the table the index was built from.
    pub fn first_match<'r>(
        &self,
        routes: &'r [Arc<Route>],
        request: &RequestFacts,
    ) -> Option<&'r Arc<Route>> {
        // One list per matching prefix, plus the exact and unindexed lists, so eight fit every
        // path of up to five segments without a heap allocation.
        let mut candidates: SmallVec<[&[u32]; 8]> = SmallVec::new();
        if !self.unindexed.is_empty() {
            candidates.push(&self.unindexed);
        }
        if let Some(positions) = self.exact.get(request.path) {
            candidates.push(positions);
        }
        if !self.prefix.is_empty() {
            for prefix in segment_prefixes(request.path) {
                if let Some(positions) = self.prefix.get(prefix) {
                    candidates.push(positions);
                }
            }
        }

        // Merge the lists, each in file order, and stop at the first route that matches.
        loop {
            let (list, &position) = candidates
                .iter()
                .enumerate()
                .filter_map(|(list, positions)| positions.first().map(|p| (list, p)))
                .min_by_key(|&(_, position)| position)?;
            let route = &routes[position as usize];
            if route.matcher.matches(request) {
                return Some(route);
            }
            candidates[list] = &candidates[list][1..];
        }
    }
}

/// Yields every prefix of `path` that a segment-aware `path_prefix` can equal while matching
/// it: `/`, then the path up to each later `/`, then the whole path.
fn segment_prefixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let inner = path
        .iter()
        .enumerate()
        .skip(1)
        .filter(|&(_, &byte)| byte == b'/')
        .map(move |(i, _)| &path[..i]);
    std::iter::once(&b"/"[..])
        .chain(inner)
        .chain((path.len() > 1).then_some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use http::{HeaderMap, Method};

    #[test]
    fn prefixes_of_a_path() {
        let prefixes: Vec<&[u8]> = segment_prefixes(b"/a/bc/d").collect();
        assert_eq!(prefixes, vec![&b"/"[..], b"/a", b"/a/bc", b"/a/bc/d"]);
        let root: Vec<&[u8]> = segment_prefixes(b"/").collect();
        assert_eq!(root, vec![&b"/"[..]]);
        let trailing: Vec<&[u8]> = segment_prefixes(b"/a/").collect();
        assert_eq!(trailing, vec![&b"/"[..], b"/a", b"/a/"]);
    }

    /// Compares the index with trying every route in order, over a table that mixes every
    /// kind of path condition, hosts and methods, and paths that hit each of them.
    #[test]
    fn index_agrees_with_linear_scan() {
        let mut yaml = String::from("listen:\n  - address: 127.0.0.1:1\nroutes:\n");
        let kinds = [
            "path_prefix: /api",
            "path_prefix: /api/users",
            "path: /api/users",
            "path: /",
            "path_prefix: /",
            "path_regex: \"^/api/v[0-9]+\"",
            "path_prefix: /static",
            "headers: { x-a: \"1\" }",
        ];
        for i in 0..64 {
            let kind = kinds[i % kinds.len()];
            let extra = match i % 5 {
                0 => ", hosts: [\"*.example\"]",
                1 => ", methods: [POST]",
                2 => ", hosts: [b.example]",
                _ => "",
            };
            yaml.push_str(&format!(
                "  - name: r{i}\n    match: {{ {kind}{extra} }}\n    respond: {{ status: 200 }}\n"
            ));
        }
        let config = load_str(&yaml, "test.yaml", std::path::Path::new(".")).expect("valid");
        let paths: [&[u8]; 9] = [
            b"/",
            b"/api",
            b"/api/users",
            b"/api/users/7",
            b"/api/v2/x",
            b"/apix",
            b"/static/a.css",
            b"/other",
            b"/api/",
        ];
        let headers = HeaderMap::new();
        for path in paths {
            for host in ["a.example", "b.example", "c.other"] {
                for method in [Method::GET, Method::POST] {
                    let facts = RequestFacts {
                        method: &method,
                        host,
                        path,
                        headers: &headers,
                    };
                    let linear = config.routes.iter().find(|r| r.matcher.matches(&facts));
                    let indexed = config.route_index.first_match(&config.routes, &facts);
                    assert_eq!(
                        indexed.map(|r| &r.name),
                        linear.map(|r| &r.name),
                        "{method} {host} {}",
                        String::from_utf8_lossy(path)
                    );
                }
            }
        }
    }
}
