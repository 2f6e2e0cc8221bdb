//! Issue 15, sizes: a deployer's deployments reach its agent (Watch, List) and
//! `ds deployment ls` in pages, so that no answer depends on tonic's 4 MiB message limit.
//! Each test holds many times that limit of deployments of about 200 KiB each. The
//! 10,000-deployment proof (about 2 GB) is the benchmark `benches/paging.rs`:
//! `hack/bench-paging.sh` runs it and docs/benchmarks.md has its figures.

use ds_core::DeploymentSpec;
use ds_core::proto::{self, DeploymentView};
use ds_kube_sim::{SimCluster, SimConfig};
use ds_test_support::pages::{self, MESSAGE_LIMIT};
use ds_test_support::{
    DEADLINE, TestGateway, agent_args, agent_service, eventually_within, start_agent,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use prost::Message;
use std::time::Duration;

mod paging_support;

use paging_support::*;

/// `ds deployment ls -o json`: the names, checked to be every deployment once.
async fn assert_ls_json(gw: &TestGateway, count: usize) {
    let out = ds_ls(gw, &["-o", "json"], DEADLINE, false).await;
    let listed: serde_json::Value = serde_json::from_str(&out).expect("one JSON list");
    let names: Vec<&str> = listed
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|d| d["name"].as_str().expect("a name"))
        .collect();
    let expected: Vec<String> = (0..count).map(name).collect();
    assert_eq!(names, expected, "every deployment once, in order");
    let env = &listed[0]["spec"]["env"];
    assert_eq!(
        env.as_array().map(Vec::len),
        Some(ENV_VALUES),
        "whole specs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_large_deployments_sync_to_a_real_agent_and_list() {
    // 30 x 200 KiB = 6 MiB: one snapshot message over the limit before paging.
    const COUNT: usize = 30;
    let gw = TestGateway::start().await;
    let token = populate(&gw.control(), "big", COUNT).await;

    assert_whole(&watch(&gw.url(), &token, false).await, COUNT, "watch");
    let listed = pages::list_snapshot(&mut agent_service(&gw.url(), &token))
        .await
        .expect("list");
    assert_whole(&listed, COUNT, "list");
    let spec = listed.snapshot.deployments[0].spec.clone().expect("a spec");
    let expected = large_spec(0);
    let values: Vec<&str> = spec.env.iter().map(|e| e.value.as_str()).collect();
    let sent: Vec<&str> = expected.env.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(values, sent, "specs arrive whole");
    assert_ls_json(&gw, COUNT).await;

    // A real agent syncs every deployment into the simulated cluster.
    let sim = SimCluster::start(SimConfig::default()).await.expect("sim");
    let agent = start_agent(agent_args(&gw.url(), &token), sim.client()).await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "default");
    eventually_within(
        Duration::from_secs(120),
        "the agent to create all 30 Deployments",
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            (list.items.len() == COUNT).then_some(())
        },
    )
    .await;
    agent.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_large_deployments_page_through_watch_list_and_ls() {
    // 100 x 200 KiB = 20 MiB: five times the limit.
    const COUNT: usize = 100;
    let gw = TestGateway::start().await;
    let token = populate(&gw.control(), "big", COUNT).await;
    // A small deployer beside it: its snapshot stays one page, the list covers both.
    let small = gw
        .control()
        .create_deployer(proto::CreateDeployerRequest {
            name: "small".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;

    let watched = watch(&gw.url(), &token, false).await;
    assert_whole(&watched, COUNT, "watch");
    // Pages come sorted by namespace and name, without overlap.
    let names: Vec<&str> = watched
        .snapshot
        .deployments
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let expected: Vec<String> = (0..COUNT).map(name).collect();
    assert_eq!(names, expected);
    let listed = pages::list_snapshot(&mut agent_service(&gw.url(), &token))
        .await
        .expect("list");
    assert_whole(&listed, COUNT, "list");
    assert_eq!(listed.ids, watched.ids, "the same snapshot both ways");
    let empty = pages::list_snapshot(&mut agent_service(&gw.url(), &small))
        .await
        .expect("list");
    assert_eq!((empty.pages, empty.ids.len()), (1, 0), "one empty page");
    assert!(empty.snapshot.complete);

    // ListDeployments: bounded pages the CLI follows.
    let mut control = gw.control();
    let mut token_in = String::new();
    let mut seen: Vec<DeploymentView> = Vec::new();
    let mut answers = 0;
    loop {
        let page = control
            .list_deployments(proto::ListDeploymentsRequest {
                page_token: token_in,
                ..Default::default()
            })
            .await
            .expect("a page")
            .into_inner();
        answers += 1;
        assert!(page.encoded_len() < MESSAGE_LIMIT);
        seen.extend(page.deployments);
        if page.next_page_token.is_empty() {
            break;
        }
        token_in = page.next_page_token;
    }
    assert!(answers > 1, "bounded by bytes: {answers} pages");
    assert_eq!(seen.len(), COUNT);
    assert_ls_json(&gw, COUNT).await;
}

#[tokio::test]
async fn list_deployments_pages_by_count_and_refuses_a_made_up_token() {
    let gw = TestGateway::start().await;
    let mut control = gw.control();
    for deployer in ["a", "b"] {
        control
            .create_deployer(proto::CreateDeployerRequest {
                name: deployer.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        for i in 0..3 {
            control
                .create_deployment(proto::CreateDeploymentRequest {
                    deployer: deployer.into(),
                    name: name(i),
                    namespace: "default".into(),
                    spec: Some(DeploymentSpec::test("iris").into()),
                })
                .await
                .unwrap();
        }
    }
    let mut page_token = String::new();
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = control
            .list_deployments(proto::ListDeploymentsRequest {
                page_size: 4,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.deployments.len());
        seen.extend(page.deployments.into_iter().map(|v| {
            let d = v.deployment.unwrap();
            (v.deployer_name, d.name)
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [4, 2]);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "each deployment once: {seen:?}");

    // One deployer's list pages the same way.
    let only_b = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "b".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_b.deployments.len(), 2);
    let rest = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "b".into(),
            page_size: 2,
            page_token: only_b.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = only_b
        .deployments
        .iter()
        .chain(&rest.deployments)
        .map(|v| v.deployment.clone().unwrap().name)
        .collect();
    assert_eq!(names, [name(0), name(1), name(2)]);
    assert!(rest.next_page_token.is_empty());
    let err = control
        .list_deployments(proto::ListDeploymentsRequest {
            deployer: "a".into(),
            page_token: only_b.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("b's token for a's list");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let err = control
        .list_deployments(proto::ListDeploymentsRequest {
            page_token: "made-up".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token the gateway did not issue");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("page_token:"),
        "{}",
        err.message()
    );
}
