//! Config validation errors from `gatehouse check` and from starting the gateway.
//!
//! Each error is one stderr line, `error: FILE:LINE:COLUMN: KEY_PATH: MESSAGE`, with the
//! offending value in double quotes in MESSAGE. These tests assert the exit code, the line
//! number, the key path and the quoted value, not the rest of the wording.

mod common;

use common::{line_of, line_of_nth, run_cli_output, CliOutput, ConfigFile};

/// A valid config. Each test replaces one piece of it with an invalid one. The upstream
/// targets are never contacted because `check` does not connect.
const VALID: &str = "listen:
  - address: {listen}
admin:
  address: {admin}
timeouts:
  connect: 2s
limits:
  max_request_body: 10MiB
upstreams:
  - name: users
    balance: round_robin
    targets:
      - { address: 127.0.0.1:9001, weight: 3 }
      - { address: 127.0.0.1:9002 }
  - name: billing
    targets:
      - { address: 127.0.0.1:9003 }
routes:
  - name: users
    match: { path_prefix: /users, methods: [GET, POST] }
    upstream: users
  - name: billing
    match: { path_regex: \"^/billing/[0-9]+$\" }
    upstream: billing
  - name: hello
    match: { path: / }
    respond: { status: 200, body: \"hello\\n\" }
";

/// Returns `VALID` with the single occurrence of `old` replaced by `new`.
fn valid_with(old: &str, new: &str) -> String {
    assert_eq!(
        VALID.matches(old).count(),
        1,
        "{old:?} must occur exactly once in VALID"
    );
    VALID.replacen(old, new, 1)
}

/// Writes `yaml` and runs `gatehouse check -c FILE` on it.
fn check(yaml: &str) -> (ConfigFile, CliOutput) {
    let config = ConfigFile::write(yaml);
    let output = run_cli_output(&["check", "-c", &config.path_str()]);
    (config, output)
}

/// One parsed `error: FILE:LINE:COLUMN: KEY_PATH: MESSAGE` line.
struct ConfigError {
    line: usize,
    key_path: String,
    message: String,
    text: String,
}

/// Parses the stderr lines that have the error format for `file`.
fn parse_errors(stderr: &str, file: &str) -> Vec<ConfigError> {
    let prefix = format!("error: {file}:");
    stderr
        .lines()
        .filter_map(|text| {
            let rest = text.strip_prefix(&prefix)?;
            let (line, rest) = rest.split_once(':')?;
            let (_column, rest) = rest.split_once(':')?;
            let (key_path, message) = rest.trim_start().split_once(": ")?;
            Some(ConfigError {
                line: line.parse().ok()?,
                key_path: key_path.to_string(),
                message: message.to_string(),
                text: text.to_string(),
            })
        })
        .collect()
}

/// Asserts that `output` is a failed run with an error on `line` whose key path starts with
/// `key_path` and whose message contains `quoted` in double quotes, when given. Matching the
/// prefix lets `routes[0].match.methods` accept `routes[0].match.methods[1]`.
fn assert_error(
    config: &ConfigFile,
    output: &CliOutput,
    line: usize,
    key_path: &str,
    quoted: Option<&str>,
) {
    assert_eq!(output.code, 1, "exit code; stderr:\n{}", output.stderr);
    let errors = parse_errors(&output.stderr, &config.path_str());
    let matching: Vec<&ConfigError> = errors
        .iter()
        .filter(|error| error.key_path.starts_with(key_path))
        .collect();
    assert!(
        !matching.is_empty(),
        "no `error: {}:LINE:COLUMN: {key_path}...: MESSAGE` line on stderr:\n{}",
        config.path_str(),
        output.stderr
    );
    let error = matching[0];
    assert_eq!(error.line, line, "line number in {:?}", error.text);
    if let Some(value) = quoted {
        assert!(
            error.message.contains(&format!("\"{value}\"")),
            "the message must quote \"{value}\": {:?}",
            error.text
        );
    }
}

#[test]
fn yaml_syntax_error() {
    let yaml = valid_with("    upstream: users\n", "    upstream: users: extra\n");
    let (config, output) = check(&yaml);

    assert_eq!(output.code, 1, "exit code; stderr:\n{}", output.stderr);
    let expected_prefix = format!(
        "error: {}:{}:",
        config.path_str(),
        line_of(&yaml, "users: extra")
    );
    assert!(
        output
            .stderr
            .lines()
            .any(|line| line.starts_with(&expected_prefix)),
        "expected a line starting with {expected_prefix:?} on stderr:\n{}",
        output.stderr
    );
}

#[test]
fn unknown_key() {
    let yaml = valid_with(
        "    match: { path_prefix: /users, methods: [GET, POST] }\n",
        "    mach: { path_prefix: /users, methods: [GET, POST] }\n",
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "mach:"),
        "routes[0].mach",
        Some("mach"),
    );
}

#[test]
fn misspelt_balance() {
    let yaml = valid_with("balance: round_robin", "balance: round_robbin");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "round_robbin"),
        "upstreams[0].balance",
        Some("round_robbin"),
    );
}

#[test]
fn duplicate_route_name() {
    let yaml = valid_with(
        "  - name: billing\n    match:",
        "  - name: users\n    match:",
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of_nth(&yaml, "  - name: users", 3),
        "routes[1].name",
        Some("users"),
    );
}

#[test]
fn duplicate_upstream_name() {
    let yaml = valid_with(
        "  - name: billing\n    targets:",
        "  - name: users\n    targets:",
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of_nth(&yaml, "  - name: users", 2),
        "upstreams[1].name",
        Some("users"),
    );
}

#[test]
fn unknown_upstream() {
    let yaml = valid_with("    upstream: billing\n", "    upstream: userz\n");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "upstream: userz"),
        "routes[1].upstream",
        Some("userz"),
    );
}

#[test]
fn duration_with_words() {
    let yaml = valid_with("  connect: 2s\n", "  connect: 2 seconds\n");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "connect: 2 seconds"),
        "timeouts.connect",
        Some("2 seconds"),
    );
}

#[test]
fn duration_without_unit() {
    let yaml = valid_with("  connect: 2s\n", "  connect: 5\n");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "connect: 5"),
        "timeouts.connect",
        Some("5"),
    );
}

#[test]
fn size_with_decimal_unit() {
    let yaml = valid_with("max_request_body: 10MiB", "max_request_body: 10MB");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "10MB"),
        "limits.max_request_body",
        Some("10MB"),
    );
}

#[test]
fn address_without_port() {
    let yaml = valid_with("{ address: 127.0.0.1:9002 }", "{ address: 127.0.0.1 }");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "{ address: 127.0.0.1 }"),
        "upstreams[0].targets[1].address",
        Some("127.0.0.1"),
    );
}

#[test]
fn address_port_out_of_range() {
    let yaml = valid_with(
        "{ address: 127.0.0.1:9003 }",
        "{ address: localhost:99999 }",
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "localhost:99999"),
        "upstreams[1].targets[0].address",
        Some("localhost:99999"),
    );
}

#[test]
fn invalid_regex() {
    let yaml = valid_with("\"^/billing/[0-9]+$\"", "\"^/v[0-9+/\"");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "path_regex"),
        "routes[1].match.path_regex",
        Some("^/v[0-9+/"),
    );
}

#[test]
fn route_without_upstream_or_respond() {
    let yaml = format!("{VALID}  - {{ name: orphan, match: {{ path: /orphan }} }}\n");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "orphan"),
        "routes[3]",
        None,
    );

    let error_line = output
        .stderr
        .lines()
        .find(|line| line.contains("routes[3]"))
        .unwrap_or_default();
    assert!(
        error_line.contains("upstream"),
        "the message names upstream: {error_line:?}"
    );
    assert!(
        error_line.contains("respond"),
        "the message names respond: {error_line:?}"
    );
}

#[test]
fn route_with_upstream_and_respond() {
    let yaml = format!(
        "{VALID}  - {{ name: both, match: {{ path: /both }}, upstream: users, respond: {{ status: 200 }} }}\n"
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "name: both"),
        "routes[3]",
        None,
    );

    let error_line = output
        .stderr
        .lines()
        .find(|line| line.contains("routes[3]"))
        .unwrap_or_default();
    assert!(
        error_line.contains("upstream"),
        "the message names upstream: {error_line:?}"
    );
    assert!(
        error_line.contains("respond"),
        "the message names respond: {error_line:?}"
    );
}

#[test]
fn match_with_two_path_kinds() {
    let yaml = valid_with(
        "match: { path: / }",
        "match: { path: /, path_prefix: /hello }",
    );
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "path_prefix: /hello"),
        "routes[2].match",
        None,
    );
}

#[test]
fn path_prefix_without_slash() {
    let yaml = valid_with("path_prefix: /users,", "path_prefix: users,");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "path_prefix: users"),
        "routes[0].match.path_prefix",
        Some("users"),
    );
}

#[test]
fn unknown_method() {
    let yaml = valid_with("methods: [GET, POST]", "methods: [GET, GTE]");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "GTE"),
        "routes[0].match.methods",
        Some("GTE"),
    );
}

#[test]
fn zero_weight() {
    let yaml = valid_with("weight: 3", "weight: 0");
    let (config, output) = check(&yaml);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "weight: 0"),
        "upstreams[0].targets[0].weight",
        Some("0"),
    );
}

#[test]
fn several_errors_all_reported() {
    let yaml = format!(
        "{VALID}  - name: a
    match: {{ path_regex: \"^/v[0-9+/\" }}
    upstream: userz
  - name: users
    match: {{ path_prefix: nope }}
    upstream: users
"
    );
    let (config, output) = check(&yaml);

    assert_error(
        &config,
        &output,
        line_of(&yaml, "^/v[0-9+/"),
        "routes[3].match.path_regex",
        Some("^/v[0-9+/"),
    );
    assert_error(
        &config,
        &output,
        line_of(&yaml, "upstream: userz"),
        "routes[3].upstream",
        Some("userz"),
    );
    assert_error(
        &config,
        &output,
        line_of_nth(&yaml, "  - name: users", 3),
        "routes[4].name",
        Some("users"),
    );
    assert_error(
        &config,
        &output,
        line_of(&yaml, "path_prefix: nope"),
        "routes[4].match.path_prefix",
        Some("nope"),
    );
}

#[test]
fn start_rejects_invalid_config() {
    let yaml = valid_with("    upstream: billing\n", "    upstream: userz\n");
    let config = ConfigFile::write(&yaml);

    // Without `check`, the gateway itself must refuse to start, with the same error.
    let output = run_cli_output(&["-c", &config.path_str()]);
    assert_error(
        &config,
        &output,
        line_of(&yaml, "upstream: userz"),
        "routes[1].upstream",
        Some("userz"),
    );
}
