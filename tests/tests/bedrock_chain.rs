//! Bedrock credentials from the AWS chain, through the real `jarvis` binary: web identity (STS
//! AssumeRoleWithWebIdentity), an ECS task role, and an EC2 instance role over IMDSv2, each a
//! stand-in on loopback. The Bedrock fake recomputes every request's SigV4 signature with the
//! credentials the stand-in issued, so a request signed with anything else fails the test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use jarvis_agent::providers::{SignedParts, sigv4_headers};
use jarvis_testkit::binary;
use jarvis_testkit::fake::{FakeResponse, FakeServer, RecordedRequest, reply};
use jarvis_testkit::sign::amz_date;

const MODEL: &str = "anthropic.claude-sonnet-5-5";
const IMDS_TOKEN: &str = "imds-session-token-1";

/// What each stand-in issues.
struct Issued {
    key: &'static str,
    secret: &'static str,
    token: &'static str,
}

fn creds_json(i: &Issued) -> String {
    serde_json::json!({
        "Code": "Success", "Type": "AWS-HMAC", "LastUpdated": "2026-11-30T00:00:00Z",
        "AccessKeyId": i.key, "SecretAccessKey": i.secret, "Token": i.token,
        "Expiration": "2099-01-01T00:00:00Z"
    })
    .to_string()
}

fn text(status: u16, body: &str) -> FakeResponse {
    let mut r = FakeResponse::raw(status, body);
    r.headers = vec![("content-type".into(), "text/plain".into())];
    r
}

/// One loopback server playing STS, the ECS credentials endpoint, IMDSv2 and Bedrock.
fn aws_fake(issued: &'static Issued) -> impl Fn(&RecordedRequest) -> FakeResponse {
    move |r: &RecordedRequest| {
        let body = String::from_utf8_lossy(&r.raw_body);
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/") if body.contains("Action=AssumeRoleWithWebIdentity") => {
                let xml = format!(
                    r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey><SessionToken>{}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials><SubjectFromWebIdentityToken>ci</SubjectFromWebIdentityToken><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/jarvis/s</Arn><AssumedRoleId>AROAEXAMPLE:s</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>"#,
                    issued.key, issued.secret, issued.token
                );
                let mut resp = FakeResponse::raw(200, &xml);
                resp.headers = vec![("content-type".into(), "text/xml".into())];
                resp
            }
            ("GET", "/ecs/credentials") => FakeResponse::raw(200, &creds_json(issued)),
            ("PUT", "/latest/api/token") => {
                text(200, IMDS_TOKEN).with_header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            }
            ("GET", p) if p.starts_with("/latest/meta-data/iam/") => {
                // IMDSv2: every read carries the session token.
                if r.headers
                    .get("x-aws-ec2-metadata-token")
                    .map(String::as_str)
                    != Some(IMDS_TOKEN)
                {
                    return text(401, "");
                }
                match p {
                    "/latest/meta-data/iam/security-credentials/"
                    | "/latest/meta-data/iam/security-credentials-extended/" => {
                        text(200, "jarvis-role")
                    }
                    "/latest/meta-data/iam/security-credentials/jarvis-role"
                    | "/latest/meta-data/iam/security-credentials-extended/jarvis-role" => {
                        FakeResponse::raw(200, &creds_json(issued))
                    }
                    _ => text(404, ""),
                }
            }
            ("POST", p) if p.starts_with("/model/") => {
                FakeResponse::bedrock(&reply("Hello from Bedrock.", &[], (10, 5, 0, 0)), &[64])
            }
            _ => text(404, ""),
        }
    }
}

/// Runs `jarvis run --local` against the fake with only the given AWS variables, and checks
/// that every Bedrock request was signed with the issued credentials.
async fn run_with(issued: &'static Issued, aws_env: &[(&str, String)]) -> FakeServer {
    let server = FakeServer::answering(aws_fake(issued)).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut c = Command::new(binary("jarvis"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("JARVIS_HOME", home.join(".jarvis"))
        .env("CLAUDE_CODE_USE_BEDROCK", "1")
        .env("AWS_REGION", "us-east-1")
        .env("ANTHROPIC_BEDROCK_BASE_URL", server.url())
        // No profile files: the chain must go past them.
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"));
    for (k, v) in aws_env {
        c.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || {
        c.args(["run", "--local", "--model", MODEL, "--dir"])
            .arg(&work)
            .arg("Say hello.")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "jarvis run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from Bedrock."));
    let creds = aws_credential_types_from(issued);
    let bedrock: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/model/"))
        .collect();
    assert_eq!(bedrock.len(), 1);
    for r in bedrock {
        assert_eq!(r.headers["x-amz-security-token"], issued.token);
        let auth = &r.headers["authorization"];
        assert!(
            auth.contains(&format!("Credential={}/", issued.key)),
            "{auth}"
        );
        let url = format!("{}{}", server.url(), r.path);
        let headers = [
            ("content-type", "application/json"),
            ("accept", "application/vnd.amazon.eventstream"),
        ];
        let parts = SignedParts {
            method: "POST",
            url: &url,
            headers: &headers,
            body: &r.raw_body,
        };
        let expected = sigv4_headers(
            &creds,
            "us-east-1",
            "bedrock",
            parts,
            amz_date(&r.headers["x-amz-date"]),
        )
        .unwrap();
        let want = expected.iter().find(|(k, _)| k == "authorization").unwrap();
        assert_eq!(&want.1, auth, "SigV4 signature does not verify");
    }
    server
}

fn aws_credential_types_from(i: &Issued) -> jarvis_agent::providers::AwsCredentials {
    jarvis_agent::providers::AwsCredentials::new(
        i.key,
        i.secret,
        Some(i.token.to_owned()),
        None,
        "test",
    )
}

fn write(path: &Path, content: &str) -> String {
    std::fs::write(path, content).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_credentials_sign_bedrock_requests() {
    static ISSUED: Issued = Issued {
        key: "ASIAWEBIDENTITY",
        secret: "web-identity-secret",
        token: "web-identity-session",
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(&dir.path().join("token"), "oidc-token-from-ci");
    let server = run_with_sts(&ISSUED, &token_file).await;
    let sts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/")
        .collect();
    assert_eq!(sts.len(), 1);
    let body = String::from_utf8_lossy(&sts[0].raw_body).into_owned();
    assert!(
        body.contains("WebIdentityToken=oidc-token-from-ci"),
        "{body}"
    );
    assert!(
        body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fjarvis"),
        "{body}"
    );
}

/// Web identity needs the STS endpoint to be the fake itself, so the server is started first
/// and its URL passed as `AWS_ENDPOINT_URL_STS`.
async fn run_with_sts(issued: &'static Issued, token_file: &str) -> FakeServer {
    let sts = FakeServer::answering(aws_fake(issued)).await.unwrap();
    let server = run_with(
        issued,
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_owned()),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/jarvis".into(),
            ),
            ("AWS_ROLE_SESSION_NAME", "jarvis-e2e".into()),
            ("AWS_ENDPOINT_URL_STS", sts.url()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    // Hand back the STS fake's record (the Bedrock one was checked in run_with).
    drop(server);
    sts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_task_role_signs_bedrock_requests() {
    static ISSUED: Issued = Issued {
        key: "ASIAECSTASKROLE",
        secret: "ecs-secret",
        token: "ecs-session",
    };
    let ecs = FakeServer::answering(aws_fake(&ISSUED)).await.unwrap();
    run_with(
        &ISSUED,
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/ecs/credentials", ecs.url()),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    assert_eq!(ecs.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_instance_role_over_imdsv2_signs_bedrock_requests() {
    static ISSUED: Issued = Issued {
        key: "ASIAINSTANCEROLE",
        secret: "imds-secret",
        token: "imds-session",
    };
    let imds = FakeServer::answering(aws_fake(&ISSUED)).await.unwrap();
    run_with(
        &ISSUED,
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())],
    )
    .await;
    let reqs = imds.requests();
    // A session token was fetched with PUT before any read (IMDSv2, not v1).
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path, "/latest/api/token");
    assert!(
        reqs[0]
            .headers
            .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
    );
    assert!(reqs.iter().any(|r| r.path.ends_with("/jarvis-role")));
}
