//! Refuses query parameters an operation does not take (400, problem+json naming the
//! parameter), so a client that misspells one, or sends a name from another API, learns it
//! instead of silently getting the default (a list asked for its next page with an unknown
//! name would answer page 1 forever).
//!
//! The names each operation takes are read from the OpenAPI description ([`crate::openapi`]),
//! so the documentation and this check cannot disagree.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::{Operation, ParameterIn};

use crate::error::ApiError;

/// Query parameter names per (method, route template).
#[derive(Debug, Default)]
pub struct KnownQueryParameters {
    by_operation: HashMap<(Method, String), BTreeSet<String>>,
}

impl KnownQueryParameters {
    /// The query parameters each operation of `spec` declares (its own and its path item's).
    pub fn from_spec(spec: &OpenApi) -> Self {
        let mut by_operation = HashMap::new();
        for (path, item) in &spec.paths.paths {
            let shared = query_names(item.parameters.as_deref());
            let operations: [(Method, &Option<Operation>); 8] = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::OPTIONS, &item.options),
                (Method::HEAD, &item.head),
                (Method::PATCH, &item.patch),
                (Method::TRACE, &item.trace),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    let mut names = shared.clone();
                    names.extend(query_names(operation.parameters.as_deref()));
                    by_operation.insert((method, path.clone()), names);
                }
            }
        }
        KnownQueryParameters { by_operation }
    }

    /// The first parameter of `query` that the operation does not take, with the names it
    /// does take. `None` when every name is known, or when the route is not described (the
    /// description's own routes, `/openapi.json` and `/docs`, take none that matter).
    pub fn first_unknown(&self, method: &Method, route: &str, query: &str) -> Option<ApiError> {
        // HEAD is answered by GET handlers.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let known = self.by_operation.get(&(method.clone(), route.to_owned()))?;
        let name = form_urlencoded_names(query).find(|name| !known.contains(name))?;
        let message = if known.is_empty() {
            "this operation takes no query parameters".to_owned()
        } else {
            let names: Vec<&str> = known.iter().map(String::as_str).collect();
            format!(
                "unknown query parameter; this operation takes: {}",
                names.join(", ")
            )
        };
        Some(ApiError::parameter(&bounded(&name), message))
    }
}

fn query_names(parameters: Option<&[utoipa::openapi::path::Parameter]>) -> BTreeSet<String> {
    parameters
        .unwrap_or_default()
        .iter()
        .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
        .map(|p| p.name.clone())
        .collect()
}

/// The decoded names of a query string's pairs (`a=1&b&c=` → a, b, c; empty pieces skipped).
fn form_urlencoded_names(query: &str) -> impl Iterator<Item = String> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let spaced = name.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned()
        })
}

/// A name as echoed in the problem: at most 64 characters (it comes from the client).
fn bounded(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Middleware: 400 for a query parameter the matched operation does not take.
pub async fn refuse_unknown(
    State(known): State<Arc<KnownQueryParameters>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    if let (Some(route), Some(query)) = (route, request.uri().query())
        && let Some(problem) = known.first_unknown(request.method(), &route, query)
    {
        return problem.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi as _;

    fn known() -> KnownQueryParameters {
        KnownQueryParameters::from_spec(&crate::openapi::ApiDoc::openapi())
    }

    fn refused(method: Method, route: &str, query: &str) -> Option<String> {
        known()
            .first_unknown(&method, route, query)
            .map(|e| e.problem().errors[0].field.clone())
    }

    #[test]
    fn declared_parameters_pass_and_others_are_named() {
        assert_eq!(
            refused(Method::GET, "/v1/orders", "limit=5&next_token=x"),
            None
        );
        assert_eq!(
            refused(Method::GET, "/v1/orders", "limit=5&page=2"),
            Some("page".to_owned())
        );
        assert_eq!(
            refused(Method::GET, "/v1/tickets", "q=rock&sort=name&free=true"),
            None
        );
        assert_eq!(
            refused(Method::GET, "/v1/tickets", "serach=rock"),
            Some("serach".to_owned())
        );
    }

    #[test]
    fn operations_without_parameters_refuse_any() {
        assert_eq!(
            refused(Method::GET, "/v1/orders/{id}/stream", "x=1"),
            Some("x".to_owned())
        );
        assert_eq!(
            refused(Method::POST, "/v1/login", "debug"),
            Some("debug".to_owned())
        );
        assert_eq!(refused(Method::GET, "/healthz", ""), None);
    }

    #[test]
    fn names_are_decoded_and_bounded() {
        assert_eq!(
            refused(Method::GET, "/v1/orders", "li%6Dit=5&page%5Ftoken=x"),
            None
        );
        let long = "a".repeat(500);
        assert_eq!(
            refused(Method::GET, "/v1/orders", &long).map(|n| n.len()),
            Some(64)
        );
    }

    #[test]
    fn routes_that_are_not_described_are_left_alone() {
        assert_eq!(refused(Method::GET, "/openapi.json", "anything=1"), None);
    }
}
