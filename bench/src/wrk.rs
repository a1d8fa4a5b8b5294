//! An independent load client beside the bench's own driver: Debian's
//! `wrk`, run on the same paths with the same connections, so the driver's
//! figures are checked against a client the project did not write.
//!
//! Every request goes through a Lua `request()` function (one per request,
//! the same cost on every path measured against another), which can turn
//! over a list of bearer tokens and give each request its own
//! `Idempotency-Key`, as the sold-out gate's purchases need.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde::Serialize;

use crate::servers::find_program;

/// What one request looks like; `tokens` turn over request by request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    /// Whole `Authorization` values (`Bearer ...`); none: no header.
    pub tokens: Vec<String>,
    /// A JSON body (with `Content-Type: application/json`).
    pub body: Option<String>,
    /// When set, each request carries `Idempotency-Key: {prefix}-{thread}-{n}`.
    pub key_prefix: Option<String>,
}

impl Request {
    /// `GET path`, with one bearer token or none.
    pub fn get(path: &str, token: Option<&str>) -> Request {
        Request {
            method: "GET",
            path: path.to_owned(),
            tokens: token.map(|t| format!("Bearer {t}")).into_iter().collect(),
            body: None,
            key_prefix: None,
        }
    }

    /// The Lua script that makes these requests.
    fn script(&self) -> String {
        let quote = |s: &str| lua_string(s);
        let mut lua = String::from("local tokens = {\n");
        for t in &self.tokens {
            let _ = writeln!(lua, "  {},", quote(t));
        }
        let _ = write!(
            lua,
            "}}\nlocal method = {}\nlocal path = {}\nlocal body = {}\nlocal prefix = {}\n",
            quote(self.method),
            quote(&self.path),
            self.body.as_deref().map_or("nil".into(), quote),
            self.key_prefix.as_deref().map_or("nil".into(), quote),
        );
        lua.push_str(
            r#"local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  local headers = {}
  if #tokens > 0 then
    headers["Authorization"] = tokens[(n + tid * 7919) % #tokens + 1]
  end
  if prefix then
    headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. n
  end
  if body then
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, path, headers, body)
end
"#,
        );
        lua
    }
}

/// `s` as a Lua string literal (control characters as `\ddd`).
fn lua_string(s: &str) -> String {
    let mut lua = String::with_capacity(s.len() + 2);
    lua.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                lua.push('\\');
                lua.push(c);
            }
            c if c.is_ascii_control() => {
                let _ = write!(lua, "\\{:03}", c as u32);
            }
            c => lua.push(c),
        }
    }
    lua.push('"');
    lua
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WrkRun {
    pub requests: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 2xx and 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts (wrk's "Socket errors").
    pub socket_errors: u64,
}

impl WrkRun {
    /// Answers that were 2xx or 3xx.
    pub fn succeeded(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx)
    }

    /// The figures of several turns as one: requests and seconds summed,
    /// the latency percentiles averaged over the turns.
    pub fn joined(turns: &[WrkRun]) -> Option<WrkRun> {
        if turns.is_empty() {
            return None;
        }
        let n = turns.len() as f64;
        let sum = |f: fn(&WrkRun) -> u64| turns.iter().map(f).sum::<u64>();
        let requests = sum(|t| t.requests);
        let seconds: f64 = turns.iter().map(|t| t.seconds).sum();
        Some(WrkRun {
            requests,
            seconds,
            per_second: requests as f64 / seconds.max(1e-9),
            p50_ms: turns.iter().map(|t| t.p50_ms).sum::<f64>() / n,
            p99_ms: turns.iter().map(|t| t.p99_ms).sum::<f64>() / n,
            non_2xx: sum(|t| t.non_2xx),
            socket_errors: sum(|t| t.socket_errors),
        })
    }
}

/// Where wrk is, if installed.
pub fn program() -> Option<PathBuf> {
    find_program("wrk")
}

/// Runs wrk (2 threads, `connections`, for `seconds` rounded up to whole
/// seconds, wrk's unit) against `base` (`http://host:port`) with
/// `request`. Blocking: call it from `spawn_blocking`.
pub fn run(
    program: &std::path::Path,
    base: &str,
    request: &Request,
    connections: usize,
    seconds: f64,
) -> Result<WrkRun, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("request.lua");
    std::fs::write(&script, request.script()).map_err(|e| e.to_string())?;
    let whole = seconds.ceil().max(1.0) as u64;
    let output = Command::new(program)
        .args(["-t", "2", "-c"])
        .arg(connections.max(2).to_string())
        .arg("-d")
        .arg(format!("{whole}s"))
        // A slow answer is a figure, not an error.
        .args(["--timeout", "30s", "--latency", "-s"])
        .arg(&script)
        .arg(format!("{}{}", base.trim_end_matches('/'), request.path))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {}{}",
            output.status,
            text.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse(&text).ok_or_else(|| format!("wrk's output was not understood: {text}"))
}

/// [`run`] on a blocking thread.
pub async fn measure(
    program: PathBuf,
    base: String,
    request: Request,
    connections: usize,
    seconds: f64,
) -> Result<WrkRun, String> {
    tokio::task::spawn_blocking(move || run(&program, &base, &request, connections, seconds))
        .await
        .map_err(|e| format!("wrk's thread failed: {e}"))?
}

/// A duration as wrk prints it (`812.00us`, `1.23ms`, `2.01s`, `1.00m`),
/// in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let per = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(number * per)
}

/// wrk's `--latency` report.
fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let (mut p50, mut p99, mut total) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = millis(v),
            ["99%", v] => p99 = millis(v),
            [n, "requests", "in", took, ..] => {
                run.requests = n.parse().ok()?;
                run.seconds = millis(took.trim_end_matches(','))? / 1e3;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => run.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                run.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Requests/sec:", v] => total = v.parse().ok(),
            _ => {}
        }
    }
    run.per_second = total?;
    run.p50_ms = p50?;
    run.p99_ms = p99?;
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 1s test @ http://127.0.0.1:8080/healthz
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms    1.02ms  20.31ms   86.37%
    Req/Sec    12.34k     1.02k   14.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.90ms
     90%    3.50ms
     99%    1.02s
  24567 requests in 1.00s, 2.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 17
Requests/sec:  24551.23
Transfer/sec:      2.34MB
";

    #[test]
    fn wrk_reports_are_read() {
        let run = parse(REPORT).unwrap();
        assert_eq!(run.requests, 24567);
        assert!((run.seconds - 1.0).abs() < 1e-9);
        assert!((run.per_second - 24551.23).abs() < 1e-6);
        assert!((run.p50_ms - 0.812).abs() < 1e-9);
        assert!((run.p99_ms - 1020.0).abs() < 1e-9);
        assert_eq!(run.non_2xx, 17);
        assert_eq!(run.socket_errors, 3);
        assert_eq!(run.succeeded(), 24550);
        // A report without its figures is not read as zeros.
        assert!(parse("Running 1s test @ http://x\n").is_none());
        assert_eq!(millis("1.50m"), Some(90_000.0));
        assert_eq!(millis("12parsecs"), None);
    }

    #[test]
    fn turns_join_into_one_figure() {
        let turn = |requests, p99_ms| WrkRun {
            requests,
            seconds: 1.0,
            per_second: requests as f64,
            p50_ms: 1.0,
            p99_ms,
            non_2xx: 1,
            socket_errors: 0,
        };
        let joined = WrkRun::joined(&[turn(100, 2.0), turn(300, 4.0)]).unwrap();
        assert_eq!(joined.requests, 400);
        assert!((joined.per_second - 200.0).abs() < 1e-9);
        assert!((joined.p99_ms - 3.0).abs() < 1e-9);
        assert_eq!(joined.non_2xx, 2);
        assert!(WrkRun::joined(&[]).is_none());
    }

    #[test]
    fn the_script_turns_tokens_and_keys_over() {
        let request = Request {
            method: "POST",
            path: "/api/v1/sales/s/purchase".into(),
            tokens: vec!["Bearer a".into(), "Bearer \"b\"".into()],
            body: Some(r#"{"quantity":1}"#.into()),
            key_prefix: Some("run-gate".into()),
        };
        let lua = request.script();
        assert!(lua.contains(r#""Bearer \"b\"","#), "{lua}");
        assert!(lua.contains(r#"local body = "{\"quantity\":1}""#), "{lua}");
        assert!(lua.contains(r#"local prefix = "run-gate""#), "{lua}");
        assert_eq!(lua_string("a\nb\\"), r#""a\010b\\""#);
        let get = Request::get("/healthz", None).script();
        assert!(get.contains("local body = nil") && get.contains("local prefix = nil"));
    }
}
