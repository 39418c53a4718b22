//! The ownership function has one definition and five implementations (issue 18, item 2):
//! the Rust core, the SQL functions installed in legacy, `cutover owner`, and the Python and
//! Java snippets in docs/BACKSYNC.md run exactly as printed there. Over the same 10,000 keys
//! they must agree on every bucket and owner.

use std::io::Write;
use std::process::{Command, Stdio};

use super::apply::connect;
use super::support::{cutover_bin, local_config, python, root};
use cutover::backsync::owner;

/// 10,000 keys: integers, composite keys, uuids, texts with colons, spaces and non-ASCII.
fn keys() -> Vec<Vec<String>> {
    (0..10_000u32)
        .map(|i| match i % 4 {
            0 => vec![i.to_string()],
            1 => vec![
                (i * 7919).to_string(),
                ["eu", "us", "ap"][i as usize % 3].to_string(),
            ],
            2 => vec![format!("{:08x}-0000-4000-8000-{:012x}", i, i as u64 * 31)],
            _ => vec![format!("straße:{i} ünïcode"), format!("{}", i % 13)],
        })
        .collect()
}

/// The fenced code block after `<!-- snippet: NAME -->` in docs/BACKSYNC.md.
fn snippet(name: &str) -> String {
    let doc = std::fs::read_to_string(root().join("docs/BACKSYNC.md")).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = &doc[doc
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} missing"))
        + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_string()
}

/// Run `cmd` with the keys (tab-separated, one per line) on stdin; its stdout lines.
fn run_with_keys(mut cmd: Command, keys: &[Vec<String>]) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = keys.iter().map(|k| k.join("\t") + "\n").collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Per key "bucket owner" at 10 %, from the Rust core.
fn expected(keys: &[Vec<String>]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{} {}",
                owner::bucket(k),
                owner::owner(owner::share_bp(10.0), k).as_str()
            )
        })
        .collect()
}

fn assert_same(what: &str, got: &[String], want: &[String], keys: &[Vec<String>]) {
    assert_eq!(got.len(), want.len(), "{what}: {} answers", got.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what} disagrees on key {:?}", keys[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cli_python_and_java_agree_with_the_rust_core_on_10k_keys() {
    let keys = keys();
    let want = expected(&keys);
    let new = want.iter().filter(|w| w.ends_with(" new")).count();
    assert!(
        (800..=1200).contains(&new),
        "{new} of 10,000 keys new at 10 %"
    );

    // SQL, installed in legacy like `cutover phase` installs it.
    let cfg = local_config();
    let l = connect(&cfg.source.url).await;
    cutover::state::ensure_control(&l).await.unwrap();
    let json = serde_json::to_string(&keys).unwrap();
    let rows = l
        .query(
            "SELECT cutover.key_bucket(VARIADIC ARRAY(SELECT jsonb_array_elements_text(k)))::text
                    || ' ' || cutover.owner(10, VARIADIC ARRAY(SELECT jsonb_array_elements_text(k)))
             FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS t(k, i) ORDER BY i",
            &[&json],
        )
        .await
        .unwrap();
    let sql: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_same("SQL cutover.key_bucket/owner", &sql, &want, &keys);

    // The CLI.
    let mut cli = Command::new(cutover_bin());
    cli.args(["owner", "--share", "10", "--keys-from", "-"]);
    let got: Vec<String> = run_with_keys(cli, &keys)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.rsplitn(3, '\t').collect();
            format!("{} {}", f[1], f[0])
        })
        .collect();
    assert_same("cutover owner", &got, &want, &keys);

    // The Python snippet, as printed in the docs.
    let dir = tempfile::tempdir().unwrap();
    let py = dir.path().join("check_owner.py");
    std::fs::write(
        &py,
        format!(
            "{}\nimport sys\nfor line in sys.stdin:\n    parts = line.rstrip('\\n').split('\\t')\n    print(key_bucket(*parts), owner(10, *parts))\n",
            snippet("owner.py")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&py);
    assert_same(
        "the Python snippet",
        &run_with_keys(cmd, &keys),
        &want,
        &keys,
    );

    // The Java snippet, as printed in the docs, compiled with the machine's JDK.
    std::fs::write(dir.path().join("Owner.java"), snippet("Owner.java")).unwrap();
    std::fs::write(
        dir.path().join("CheckOwner.java"),
        r#"import java.io.*;
import java.nio.charset.StandardCharsets;
public final class CheckOwner {
    public static void main(String[] a) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, "UTF-8");
        for (String line; (line = in.readLine()) != null; ) {
            String[] parts = line.split("\t", -1);
            out.println(Owner.keyBucket(parts) + " " + Owner.owner(10, parts));
        }
        out.flush();
    }
}
"#,
    )
    .unwrap();
    let javac = Command::new("javac")
        .args(["-encoding", "UTF-8", "-d"])
        .arg(dir.path())
        .arg(dir.path().join("Owner.java"))
        .arg(dir.path().join("CheckOwner.java"))
        .output()
        .expect("javac (OpenJDK, on the machine)");
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let mut java = Command::new("java");
    java.arg("-Dfile.encoding=UTF-8")
        .arg("-cp")
        .arg(dir.path())
        .arg("CheckOwner");
    assert_same(
        "the Java snippet",
        &run_with_keys(java, &keys),
        &want,
        &keys,
    );
}
