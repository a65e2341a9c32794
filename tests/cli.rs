//! The `check` and `route` subcommands, `--version` and `--help`.

mod common;

use common::{run_cli_output, CliOutput, ConfigFile};

/// Upstream definitions shared by the configs below. The targets are never contacted.
const UPSTREAMS: &str = "listen:
  - address: {listen}
admin:
  address: {admin}
upstreams:
  - name: users
    targets:
      - { address: 127.0.0.1:9001 }
  - name: billing
    targets:
      - { address: 127.0.0.1:9002 }
routes:
";

/// Writes `UPSTREAMS` followed by `routes_yaml` to a config file.
fn config_with_routes(routes_yaml: &str) -> ConfigFile {
    ConfigFile::write(&format!("{UPSTREAMS}{routes_yaml}"))
}

fn warning_lines(output: &CliOutput) -> Vec<&str> {
    output
        .stdout
        .lines()
        .filter(|line| line.starts_with("warning:"))
        .collect()
}

/// Asserts that `output` has a warning line naming route `shadowed`, saying it is shadowed,
/// and naming the earlier route `by`. Names are compared with their double quotes.
fn assert_shadow_warning(output: &CliOutput, shadowed: &str, by: &str) {
    let shadowed_quoted = format!("\"{shadowed}\"");
    let by_quoted = format!("\"{by}\"");
    let warnings = warning_lines(output);
    let line = warnings
        .iter()
        .find(|line| line.contains(&shadowed_quoted))
        .unwrap_or_else(|| {
            panic!(
                "no `warning:` line naming {shadowed_quoted}; stdout:\n{}\nstderr:\n{}",
                output.stdout, output.stderr
            )
        });
    assert!(
        line.contains("shadowed"),
        "the warning says shadowed: {line:?}"
    );
    assert!(
        line.contains(&by_quoted),
        "the warning names the earlier route {by_quoted}: {line:?}"
    );
}

#[test]
fn check_valid_config() {
    let config = config_with_routes(
        "  - name: users
    match: { path_prefix: /users }
    upstream: users
  - name: billing
    match: { path_prefix: /billing }
    upstream: billing
  - name: hello
    match: { path: / }
    respond: { status: 200, body: \"hello\\n\" }
",
    );
    let output = run_cli_output(&["check", "-c", &config.path_str()]);

    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    let expected = format!("{}: ok (3 routes, 2 upstreams)", config.path_str());
    assert!(
        output.stdout.lines().any(|line| line == expected),
        "stdout must contain the line {expected:?}; stdout:\n{}",
        output.stdout
    );
    assert_eq!(
        warning_lines(&output),
        Vec::<&str>::new(),
        "no warnings for disjoint routes"
    );
}

#[test]
fn check_prefix_shadowed() {
    let config = config_with_routes(
        "  - name: api
    match: { path_prefix: /api }
    upstream: users
  - name: api-users
    match: { path_prefix: /api/users }
    upstream: billing
",
    );
    let output = run_cli_output(&["check", "-c", &config.path_str()]);

    assert_eq!(
        output.code, 0,
        "a shadowed route is a warning, not an error; stderr:\n{}",
        output.stderr
    );
    assert_shadow_warning(&output, "api-users", "api");
}

#[test]
fn check_catch_all_shadows_later() {
    let config = config_with_routes(
        "  - name: everything
    match: {}
    upstream: users
  - name: billing
    match: { path: /billing, methods: [POST], hosts: [pay.example.com] }
    upstream: billing
",
    );
    let output = run_cli_output(&["check", "-c", &config.path_str()]);

    assert_eq!(
        output.code, 0,
        "a shadowed route is a warning, not an error; stderr:\n{}",
        output.stderr
    );
    assert_shadow_warning(&output, "billing", "everything");
}

#[test]
fn check_method_or_host_not_shadowed() {
    let config = config_with_routes(
        "  - name: api-read
    match: { path_prefix: /api, methods: [GET] }
    upstream: users
  - name: api-write
    match: { path_prefix: /api, methods: [POST] }
    upstream: users
  - name: shop-a
    match: { path_prefix: /shop, hosts: [a.example.com] }
    upstream: billing
  - name: shop-b
    match: { path_prefix: /shop/cart, hosts: [b.example.com] }
    upstream: billing
",
    );
    let output = run_cli_output(&["check", "-c", &config.path_str()]);

    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    assert_eq!(
        warning_lines(&output),
        Vec::<&str>::new(),
        "routes that differ by method or host are not shadowed"
    );
}

const ROUTE_TABLE: &str = "  - name: api
    match: { path_prefix: /api }
    upstream: users
    rewrite: { strip_prefix: /api }
  - name: api-users
    match: { path_prefix: /api/users }
    upstream: billing
  - name: v2
    match: { path_prefix: /v, headers: { x-api-version: \"2\" } }
    upstream: billing
  - name: v1
    match: { path_prefix: /v }
    upstream: users
  - name: admin
    match: { path_prefix: /admin }
    upstream: billing
";

#[test]
fn route_first_match_wins() {
    let config = config_with_routes(ROUTE_TABLE);
    let output = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "GET",
        "http://api.example.com/api/users/7",
    ]);

    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(
        lines.contains(&"route: api (routes[0])"),
        "the first matching route wins; stdout:\n{}",
        output.stdout
    );
    assert!(
        lines.contains(&"upstream: users"),
        "upstream line; stdout:\n{}",
        output.stdout
    );
}

#[test]
fn route_forwarded_after_strip_prefix() {
    let config = config_with_routes(ROUTE_TABLE);
    let output = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "POST",
        "http://api.example.com/api/users/7?a=1&b=%20",
    ]);

    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    assert!(
        output
            .stdout
            .lines()
            .any(|line| line == "forwarded: POST /users/7?a=1&b=%20"),
        "forwarded line after strip_prefix /api; stdout:\n{}",
        output.stdout
    );
}

#[test]
fn route_normalizes_path() {
    let config = config_with_routes(ROUTE_TABLE);
    let output = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "GET",
        "http://api.example.com/v/../admin/x",
    ]);

    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(
        lines.contains(&"route: admin (routes[4])"),
        "/v/../admin/x is routed as /admin/x; stdout:\n{}",
        output.stdout
    );
    assert!(
        lines.contains(&"forwarded: GET /admin/x"),
        "the normalized path is forwarded; stdout:\n{}",
        output.stdout
    );
}

#[test]
fn route_header_condition() {
    let config = config_with_routes(ROUTE_TABLE);

    let with_header = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "GET",
        "http://api.example.com/v/items",
        "-H",
        "X-Api-Version: 2",
    ]);
    assert_eq!(
        with_header.code, 0,
        "exit code; stderr:\n{}",
        with_header.stderr
    );
    assert!(
        with_header
            .stdout
            .lines()
            .any(|line| line == "route: v2 (routes[2])"),
        "-H 'X-Api-Version: 2' selects v2; stdout:\n{}",
        with_header.stdout
    );

    let without_header = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "GET",
        "http://api.example.com/v/items",
    ]);
    assert_eq!(
        without_header.code, 0,
        "exit code; stderr:\n{}",
        without_header.stderr
    );
    assert!(
        without_header
            .stdout
            .lines()
            .any(|line| line == "route: v1 (routes[3])"),
        "without the header v1 matches; stdout:\n{}",
        without_header.stdout
    );
}

#[test]
fn route_no_match() {
    let config = config_with_routes(ROUTE_TABLE);
    let output = run_cli_output(&[
        "route",
        "-c",
        &config.path_str(),
        "GET",
        "http://api.example.com/nowhere",
    ]);

    assert_eq!(output.code, 1, "exit code when no route matches");
    assert!(
        output.stdout.contains("no route matches"),
        "stdout must say no route matches; stdout:\n{}",
        output.stdout
    );
}

#[test]
fn version_flag() {
    let output = run_cli_output(&["--version"]);
    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    assert!(
        output.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the package version; stdout:\n{}",
        output.stdout
    );
}

#[test]
fn help_flag() {
    let output = run_cli_output(&["--help"]);
    assert_eq!(output.code, 0, "exit code; stderr:\n{}", output.stderr);
    assert!(
        output.stdout.contains("check"),
        "--help lists check; stdout:\n{}",
        output.stdout
    );
    assert!(
        output.stdout.contains("route"),
        "--help lists route; stdout:\n{}",
        output.stdout
    );
}
