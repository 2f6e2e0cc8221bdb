//! The simulated Kubernetes API server: kube-rs client behaviour, fault injection, and
//! fidelity judged by the real kubectl.

use ds_kube_sim::{FaultAnswer, Limit, SimCluster, SimConfig};
use ds_test_support::eventually;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

async fn sim() -> SimCluster {
    SimCluster::start(SimConfig {
        rollout_delay: Duration::from_millis(200),
        failing_image: Some("broken".into()),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

fn deployment(name: &str, image: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, "tier": "web"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image,
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "A", "value": "1"}]}]}
            }
        }
    }))
    .expect("valid deployment")
}

fn configmap(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .expect("valid configmap")
}

async fn make_ns(client: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
}

#[tokio::test]
async fn crud_roundtrip_with_kube_client() {
    // A rollout that never finishes: the only status write is the one at rollout start.
    let sim = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client = sim.client();
    make_ns(&client, "apps").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "apps");

    let created = api
        .create(&PostParams::default(), &deployment("web", "nginx:1", 2))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    // Server-side defaults clients rely on.
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    assert_eq!(spec.revision_history_limit, Some(10));

    // Read after the simulated controller has recorded the rollout start, so the replace
    // below carries the latest resourceVersion.
    let got = eventually("rollout start observed", || {
        let api = api.clone();
        async move {
            let d = api.get("web").await.ok()?;
            (d.status.as_ref()?.observed_generation == Some(1)).then_some(d)
        }
    })
    .await;
    assert_eq!(got.metadata.uid, meta.uid);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // Replace bumps generation (spec changed) and the resourceVersion.
    let mut changed = got.clone();
    changed.spec.as_mut().unwrap().replicas = Some(3);
    let replaced = api
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    // JSON merge patch of a label: generation unchanged.
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("extra").map(String::as_str),
        Some("yes")
    );
    assert_eq!(patched.metadata.generation, Some(2));

    // JSON patch.
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/replicas", "value": 5}
    ]))
    .unwrap();
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(5));

    // Strategic merge on containers keyed by name keeps the other container fields.
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "main", "image": "nginx:2"}
            ]}}}})),
        )
        .await
        .unwrap();
    let c = &patched.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("nginx:2"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);

    // generateName.
    let mut generated = deployment("ignored", "nginx:1", 1);
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("batch-".into());
    let g = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let gname = g.metadata.name.unwrap();
    assert!(gname.starts_with("batch-") && gname.len() == "batch-".len() + 5);

    // Delete, then 404.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let (code, reason) = api_err(api.get("web").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    sim.shutdown().await;
}

#[tokio::test]
async fn conflicts_and_missing_objects_answer_like_the_api_server() {
    let sim = sim().await;
    let client = sim.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();

    // Duplicate create.
    let (code, reason) = api_err(
        cms.create(&PostParams::default(), &configmap("c", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // A replace carrying a stale resourceVersion.
    let mut a = first.clone();
    a.data = Some([("k".to_string(), "a".to_string())].into());
    cms.replace("c", &PostParams::default(), &a).await.unwrap();
    let mut stale = first.clone();
    stale.data = Some([("k".to_string(), "b".to_string())].into());
    let err = cms
        .replace("c", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("{other}"),
    }

    // Writing into a namespace that does not exist.
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let err = missing
        .create(&PostParams::default(), &configmap("x", json!({})))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "namespaces \"nope\" not found");
        }
        other => panic!("{other}"),
    }

    // Invalid names are rejected with 422 Invalid.
    let (code, reason) = api_err(
        cms.create(&PostParams::default(), &configmap("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // Patch of a missing object.
    let (code, _) = api_err(
        cms.patch(
            "absent",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn selectors_pagination_and_dry_run() {
    let sim = sim().await;
    let client = sim.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        cms.create(
            &PostParams::default(),
            &configmap(
                &format!("cm-{i}"),
                json!({"tier": tier, "n": i.to_string()}),
            ),
        )
        .await
        .unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let count = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            cms.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count("tier=web").await, 4);
    assert_eq!(count("tier!=web").await, 3);
    assert_eq!(count("tier in (web,db)").await, 7);
    assert_eq!(count("tier in (web),n notin (0,2)").await, 2);
    assert_eq!(count("n").await, 7);
    assert_eq!(count("!n").await, 0);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(names(by_name), vec!["cm-3"]);

    // limit + continue walk every item once.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = cms.list(&lp).await.unwrap();
        let token = page.metadata.continue_.clone();
        seen.extend(names(page));
        match token.filter(|t| !t.is_empty()) {
            Some(t) => lp = ListParams::default().limit(3).continue_token(&t),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 7);
    seen.dedup();
    assert_eq!(seen.len(), 7);

    // dryRun=All stores nothing.
    let rv_before = sim.resource_version();
    cms.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &configmap("dry", json!({})),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("dry").await.unwrap_err()).0, 404);
    assert_eq!(sim.resource_version(), rv_before);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_side_apply_tracks_two_field_managers() {
    let sim = sim().await;
    let client = sim.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let applied = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared"},
        "data": {"a": "1"}
    });
    let first = cms
        .patch(
            "shared",
            &PatchParams::apply("alpha"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(first.data.as_ref().unwrap()["a"], "1");
    let rv = first.metadata.resource_version.clone();

    // Re-applying the same configuration is a no-op: same resourceVersion.
    let again = cms
        .patch(
            "shared",
            &PatchParams::apply("alpha"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, rv);

    let other = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared"},
        "data": {"b": "2"}
    });
    let both = cms
        .patch("shared", &PatchParams::apply("beta"), &Patch::Apply(&other))
        .await
        .unwrap();
    let data = both.data.unwrap();
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "2"));
    let managers: Vec<String> = both
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.contains(&"alpha".to_string()), "{managers:?}");
    assert!(managers.contains(&"beta".to_string()), "{managers:?}");

    // beta changing alpha's field conflicts (409 naming the manager and field)...
    let steal = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared"},
        "data": {"a": "stolen", "b": "2"}
    });
    let err = cms
        .patch("shared", &PatchParams::apply("beta"), &Patch::Apply(&steal))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(s.message.contains("alpha"), "{}", s.message);
            assert!(s.message.contains(".data.a"), "{}", s.message);
        }
        other => panic!("{other}"),
    }
    // ...and succeeds with force, moving the field to beta.
    let forced = cms
        .patch(
            "shared",
            &PatchParams::apply("beta").force(),
            &Patch::Apply(&steal),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["a"], "stolen");
    // alpha no longer owns `a`: its re-apply of only `a: 1` now conflicts with beta.
    let err = cms
        .patch(
            "shared",
            &PatchParams::apply("alpha"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(err).0, 409);

    // Apply without a field manager is rejected.
    let err = cms
        .patch("shared", &PatchParams::default(), &Patch::Apply(&applied))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).0, 422);
    sim.shutdown().await;
}

#[tokio::test]
async fn status_subresource_and_service_defaults() {
    let sim = sim().await;
    let client = sim.client();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let ip = spec.cluster_ip.clone().unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");
    let port = &spec.ports.unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80))
    );

    // An apply that omits clusterIP keeps the allocated one.
    let applied = svcs
        .patch(
            "web",
            &PatchParams::apply("t"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.unwrap().cluster_ip, Some(ip));

    // Deployment status only changes through /status.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let sim_slow = SimCluster::start(SimConfig {
        rollout_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let slow: Api<Deployment> = Api::namespaced(sim_slow.client(), "default");
    slow.create(&PostParams::default(), &deployment("d", "nginx:1", 1))
        .await
        .unwrap();
    let through_main = slow
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 7}})),
        )
        .await
        .unwrap();
    assert_ne!(through_main.status.and_then(|s| s.ready_replicas), Some(7));
    let through_status = slow
        .patch_status(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(
        through_status.status.and_then(|s| s.ready_replicas),
        Some(7)
    );
    drop(deps);
    sim_slow.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn deployment_rollout_converges_and_failing_images_do_not() {
    let sim = sim().await;
    let client = sim.client();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deps.create(&PostParams::default(), &deployment("good", "nginx:1", 3))
        .await
        .unwrap();
    deps.create(
        &PostParams::default(),
        &deployment("bad", "registry/broken:1", 2),
    )
    .await
    .unwrap();
    eventually("good deployment available", || {
        let deps = deps.clone();
        async move {
            let d = deps.get("good").await.ok()?;
            let s = d.status?;
            (s.observed_generation == Some(1)
                && s.available_replicas == Some(3)
                && s.updated_replicas == Some(3)
                && s.ready_replicas == Some(3))
            .then_some(())
        }
    })
    .await;
    let good_pods = pods
        .list(&ListParams::default().labels("app=good"))
        .await
        .unwrap();
    assert_eq!(good_pods.items.len(), 3);
    let pod_name = good_pods.items[0].metadata.name.clone().unwrap();
    let log = pods
        .logs(&pod_name, &kube::api::LogParams::default())
        .await
        .unwrap();
    assert!(log.contains(&pod_name), "{log}");

    let cond = eventually("bad deployment times out", || {
        let deps = deps.clone();
        async move {
            let s = deps.get("bad").await.ok()?.status?;
            s.conditions?
                .into_iter()
                .find(|c| c.type_ == "Progressing" && c.status == "False")
        }
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    let bad = deps.get("bad").await.unwrap().status.unwrap();
    assert_eq!(bad.available_replicas.unwrap_or(0), 0);

    // Deleting the Deployment removes its pods (ownerReference cascade).
    deps.delete("good", &DeleteParams::default()).await.unwrap();
    let left = pods
        .list(&ListParams::default().labels("app=good"))
        .await
        .unwrap();
    assert!(left.items.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn namespace_delete_removes_its_objects() {
    let sim = sim().await;
    let client = sim.client();
    make_ns(&client, "tmp").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();
    let nss = Api::<Namespace>::all(client.clone());
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    // Terminating first: no new content, existing content still readable.
    let ns = nss.get("tmp").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let (code, reason) = api_err(
        cms.create(&PostParams::default(), &configmap("d", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    eventually("namespace and content gone", || {
        let (nss, cms) = (nss.clone(), cms.clone());
        async move {
            let ns_gone = nss.get("tmp").await.is_err();
            let cm_gone = cms.get("c").await.is_err();
            (ns_gone && cm_gone).then_some(())
        }
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn watcher_and_reflector_survive_dropped_watches_and_410() {
    let sim = sim().await;
    let client = sim.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // Every watch ends after 2 events: the watcher must re-watch from where it was.
    sim.faults().drop_watches_after_events(2);
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = watcher(cms.clone(), watcher::Config::default().labels("team=a"))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(r) = s.next().await {
            let _ = r;
        }
    });
    reader.wait_until_ready().await.unwrap();
    for i in 0..10 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("a-{i}"), json!({"team": "a"})),
        )
        .await
        .unwrap();
        cms.create(
            &PostParams::default(),
            &configmap(&format!("b-{i}"), json!({"team": "b"})),
        )
        .await
        .unwrap();
    }
    eventually("reflector holds the 10 selected objects", || {
        let reader = reader.clone();
        async move { (reader.state().len() == 10).then_some(()) }
    })
    .await;
    let watches_before = sim.counters().get("watch", "configmaps");
    assert!(
        watches_before > 2,
        "the watcher re-watched ({watches_before})"
    );

    // A 410 on the next watch: the watcher re-lists and still converges.
    sim.faults().drop_watches_after_events(0);
    sim.faults().gone_on_next_watch();
    // Make the current watch end so the next one is the 410.
    sim.faults().drop_watches_after_events(1);
    cms.create(
        &PostParams::default(),
        &configmap("a-late", json!({"team": "a"})),
    )
    .await
    .unwrap();
    // Watches last again; the pending 410 stays armed for the watcher's next watch.
    sim.faults().drop_watches_after_events(0);
    cms.delete("a-0", &DeleteParams::default()).await.unwrap();
    // An object leaving the selection disappears from the store.
    cms.patch(
        "a-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "b"}}})),
    )
    .await
    .unwrap();
    eventually("reflector reflects the late changes", || {
        let reader = reader.clone();
        async move {
            let mut names: Vec<String> = reader
                .state()
                .iter()
                .map(|c| c.metadata.name.clone().unwrap())
                .collect();
            names.sort();
            (names.len() == 9
                && names.contains(&"a-late".to_string())
                && !names.contains(&"a-0".to_string())
                && !names.contains(&"a-1".to_string()))
            .then_some(())
        }
    })
    .await;
    task.abort();
    sim.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_too_old_resource_version_is_gone() {
    let sim = SimCluster::start(SimConfig {
        watch_history: 5,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let first = cms
        .create(&PostParams::default(), &configmap("c0", json!({})))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.unwrap();
    for i in 1..20 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("c{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    let mut stream = cms
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await {
        Ok(Some(kube::core::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    // From a recent version the history replays.
    let recent = sim.resource_version() - 1;
    let mut stream = cms
        .watch(&kube::api::WatchParams::default(), &recent.to_string())
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(kube::core::WatchEvent::Added(c)) => {
            assert_eq!(c.metadata.name.as_deref(), Some("c19"))
        }
        other => panic!("expected ADDED c19, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_injection_error_answers() {
    let sim = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();

    // Count: exactly the next two gets fail with 500.
    sim.faults()
        .fail("get", "configmaps", FaultAnswer::Internal, Limit::Count(2));
    assert_eq!(api_err(cms.get("c").await.unwrap_err()).0, 500);
    assert_eq!(api_err(cms.get("c").await.unwrap_err()).0, 500);
    cms.get("c").await.unwrap();

    // 409 on patch.
    sim.faults().fail(
        "patch",
        "configmaps",
        FaultAnswer::Conflict,
        Limit::Count(1),
    );
    let (code, reason) = api_err(
        cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // 429 carries Retry-After.
    sim.faults().fail(
        "list",
        "*",
        FaultAnswer::TooManyRequests {
            retry_after_secs: 7,
        },
        Limit::Count(1),
    );
    let resp = reqwest_like_get(&sim, "/api/v1/namespaces/default/configmaps").await;
    assert_eq!(resp.0, 429);
    assert_eq!(resp.1.as_deref(), Some("7"));
    assert_eq!(resp.2["reason"], "TooManyRequests");

    // Rate: half of the requests fail, deterministically spread.
    sim.faults()
        .fail("get", "configmaps", FaultAnswer::Internal, Limit::Rate(0.5));
    let mut failed = 0;
    for _ in 0..10 {
        if cms.get("c").await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 5);
    sim.faults().clear();
    cms.get("c").await.unwrap();

    // Latency: every answer takes at least the configured delay.
    sim.faults().set_latency(Duration::from_millis(300));
    let t = std::time::Instant::now();
    cms.get("c").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.faults().clear();
    sim.shutdown().await;
}

#[tokio::test]
async fn watches_end_after_the_configured_time() {
    let sim = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    sim.faults().drop_watches_after(Duration::from_millis(200));
    let stream = cms
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap();
    // The stream ends by itself (rather than after the client's 290 s timeout).
    let n = tokio::time::timeout(DEADLINE, stream.count())
        .await
        .expect("the watch is dropped by the server");
    assert_eq!(n, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn counters_count_requests_per_verb_and_resource() {
    let sim = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    cms.create(&PostParams::default(), &configmap("c", json!({})))
        .await
        .unwrap();
    cms.get("c").await.unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "y"}})),
    )
    .await
    .unwrap();
    assert_eq!(sim.counters().get("create", "configmaps"), 1);
    assert_eq!(sim.counters().get("get", "configmaps"), 1);
    assert_eq!(sim.counters().get("patch", "configmaps"), 1);
    assert_eq!(sim.counters().writes(), 2);
    sim.counters().reset();
    cms.get("c").await.unwrap();
    cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(sim.counters().writes(), 0, "reads are not writes");
    sim.shutdown().await;
}

#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let config = SimConfig {
        state_file: Some(path.clone()),
        ..SimConfig::default()
    };
    let sim = SimCluster::start(config.clone()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    cms.create(&PostParams::default(), &configmap("kept", json!({})))
        .await
        .unwrap();
    let rv = sim.resource_version();
    sim.shutdown().await;

    let sim = SimCluster::start(config).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    assert_eq!(cms.get("kept").await.unwrap().data.unwrap()["k"], "v");
    assert!(sim.resource_version() >= rv);
    sim.shutdown().await;
}

/// A raw GET (status, Retry-After, body) with a plain hyper client: kube's client retries
/// 429 answers by itself.
async fn reqwest_like_get(sim: &SimCluster, path: &str) -> (u16, Option<String>, Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let uri: http::Uri = format!("{}{path}", sim.url()).parse().unwrap();
    let resp = client.get(uri).await.unwrap();
    let code = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        code,
        retry,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

// === fidelity: the real kubectl against the simulator ===

/// The kubectl binary (`$KUBECTL`, else `/usr/bin/kubectl`). Missing kubectl fails the test.
fn kubectl_path() -> std::path::PathBuf {
    let path = std::env::var_os("KUBECTL")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/kubectl"));
    assert!(
        path.exists(),
        "kubectl not found at {}: the fidelity tests need the real kubectl. Install it \
         (e.g. `curl -LO https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl && \
         install kubectl /usr/bin/kubectl`) or point $KUBECTL at one",
        path.display()
    );
    path
}

/// A simulator plus a kubeconfig file and a private kubectl cache directory.
struct Kubectl {
    sim: SimCluster,
    dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    async fn start() -> Self {
        let sim = sim().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kubeconfig"), sim.kubeconfig()).unwrap();
        Self { sim, dir }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl_path());
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::time::timeout(DEADLINE * 2, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .expect("kubectl runs");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and asserts success.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.ok,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).expect("kubectl printed JSON")
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: fid
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: fid
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: fid-reader
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: fid-reader
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: fid-reader
subjects:
- kind: ServiceAccount
  name: web
  namespace: fid
---
apiVersion: v1
kind: Secret
metadata:
  name: web-token
  namespace: fid
type: Opaque
stringData:
  token: not-a-real-token
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: fid
  labels:
    app: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 8080
          name: http
        env:
        - name: MODE
          value: fidelity
      - name: sidecar
        image: busybox:1.36
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: fid
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: web
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: fid
  labels:
    app: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
"#
    )
}

#[tokio::test]
async fn kubectl_apply_reapply_get_and_delete() {
    let k = Kubectl::start().await;
    let file = k.write("app.yaml", &manifest("nginx:1.27", 2));
    let out = k.ok(&["apply", "-f", &file]).await;
    for line in [
        "namespace/fid created",
        "serviceaccount/web created",
        "clusterrole.rbac.authorization.k8s.io/fid-reader created",
        "clusterrolebinding.rbac.authorization.k8s.io/fid-reader created",
        "secret/web-token created",
        "deployment.apps/web created",
        "poddisruptionbudget.policy/web created",
        "service/web created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    let dep = k.json(&["get", "deployment", "web", "-n", "fid"]).await;
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert!(
        dep["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    let secret = k.json(&["get", "secret", "web-token", "-n", "fid"]).await;
    assert_eq!(secret["data"]["token"], "bm90LWEtcmVhbC10b2tlbg==");

    // Re-apply with a new image and replica count: a strategic merge patch.
    let file = k.write("app.yaml", &manifest("nginx:1.28", 3));
    let out = k.ok(&["apply", "-f", &file]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    assert!(out.contains("namespace/fid unchanged"), "{out}");
    let dep = k.json(&["get", "deployment", "web", "-n", "fid"]).await;
    let containers = dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "web");
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 8080);
    assert_eq!(containers[0]["env"][0]["value"], "fidelity");
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(dep["metadata"]["generation"], 2);
    let raw = serde_json::to_string(&dep).unwrap();
    assert!(
        !raw.contains("$setElementOrder"),
        "directives are never stored"
    );

    // get -l, and the list form of -o json.
    let list = k
        .json(&["get", "deployments,services", "-n", "fid", "-l", "app=web"])
        .await;
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["Deployment", "Service"]);
    let none = k
        .ok(&["get", "deployments", "-n", "fid", "-l", "app in (other)"])
        .await;
    assert!(!none.contains("web"), "{none}");
    let table = k.ok(&["get", "deploy", "-n", "fid"]).await;
    assert!(table.contains("web"), "{table}");

    // delete, then NotFound.
    let out = k.ok(&["delete", "deployment", "web", "-n", "fid"]).await;
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let gone = k.run(&["get", "deployment", "web", "-n", "fid"]).await;
    assert!(!gone.ok);
    assert!(
        gone.stderr.contains("NotFound") || gone.stderr.contains("not found"),
        "{}",
        gone.stderr
    );
    let out = k.ok(&["delete", "-f", &file, "--ignore-not-found"]).await;
    assert!(out.contains("namespace \"fid\" deleted"), "{out}");
    k.sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_server_side_apply() {
    let k = Kubectl::start().await;
    let file = k.write("app.yaml", &manifest("nginx:1.27", 1));
    let out = k.ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let dep = k
        .json(&[
            "get",
            "deployment",
            "web",
            "-n",
            "fid",
            "--show-managed-fields",
        ])
        .await;
    let managers: Vec<&str> = dep["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");

    // Another manager taking a field kubectl owns conflicts; kubectl's re-apply with a
    // change then fails until forced.
    let cms: Api<Deployment> = Api::namespaced(k.sim.client(), "fid");
    cms.patch(
        "web",
        &PatchParams::apply("other").force(),
        &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let file = k.write("app.yaml", &manifest("nginx:1.27", 2));
    let out = k.run(&["apply", "--server-side", "-f", &file]).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("conflict"), "{}", out.stderr);
    let out = k
        .ok(&["apply", "--server-side", "--force-conflicts", "-f", &file])
        .await;
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let dep = k.json(&["get", "deployment", "web", "-n", "fid"]).await;
    assert_eq!(dep["spec"]["replicas"], 2);
    k.sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_rollout_status_waits_for_the_rollout() {
    let k = Kubectl::start().await;
    let file = k.write("app.yaml", &manifest("nginx:1.27", 2));
    k.ok(&["apply", "-f", &file]).await;
    let out = k
        .ok(&[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "fid",
            "--timeout=60s",
        ])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    // An image that never becomes available: rollout status reports the failure.
    let file = k.write("app.yaml", &manifest("registry/broken:1", 2));
    k.ok(&["apply", "-f", &file]).await;
    let out = k
        .run(&[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "fid",
            "--timeout=60s",
        ])
        .await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("exceeded its progress deadline"),
        "{}",
        out.stderr
    );
    k.sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_get_watch_streams_changes() {
    let k = Kubectl::start().await;
    let mut child = k
        .command(&["get", "configmaps", "-n", "default", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let cms: Api<ConfigMap> = Api::namespaced(k.sim.client(), "default");
    // Wait until kubectl's watch is open, then change things.
    eventually("kubectl opened its watch", || async {
        (k.sim.counters().get("watch", "configmaps") > 0).then_some(())
    })
    .await;
    cms.create(&PostParams::default(), &configmap("w1", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &configmap("w2", json!({})))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains("w2") {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("kubectl printed the watched changes");
    assert!(seen.iter().any(|l| l == "configmap/w1"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "configmap/w2"), "{seen:?}");
    child.kill().await.unwrap();
    k.sim.shutdown().await;
}

#[tokio::test]
async fn watch_sends_bookmarks_and_ends_at_its_timeout() {
    let sim = SimCluster::start(SimConfig {
        bookmark_interval: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let rv = sim.resource_version().to_string();
    let params = kube::api::WatchParams::default().timeout(1);
    let events: Vec<_> =
        tokio::time::timeout(DEADLINE, cms.watch(&params, &rv).await.unwrap().collect())
            .await
            .expect("the watch ends after timeoutSeconds");
    let bookmarks = events
        .iter()
        .filter(|e| matches!(e, Ok(kube::core::WatchEvent::Bookmark(_))))
        .count();
    assert!(bookmarks >= 1, "{events:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn gone_on_next_watch_answers_410_once() {
    let sim = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    let rv = sim.resource_version().to_string();
    sim.faults().gone_on_next_watch();
    let params = kube::api::WatchParams::default().timeout(1);
    let first: Vec<_> = cms.watch(&params, &rv).await.unwrap().collect().await;
    match first.as_slice() {
        [Ok(kube::core::WatchEvent::Error(e))] => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
    // The next watch from the same version works.
    let mut second = cms.watch(&params, &rv).await.unwrap().boxed();
    cms.create(&PostParams::default(), &configmap("after", json!({})))
        .await
        .unwrap();
    match second.try_next().await.unwrap() {
        Some(kube::core::WatchEvent::Added(c)) => {
            assert_eq!(c.metadata.name.as_deref(), Some("after"))
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn reapplying_an_unchanged_deployment_is_a_no_op() {
    let sim = sim().await;
    let deps: Api<Deployment> = Api::namespaced(sim.client(), "default");
    let desired = serde_json::to_value(deployment("iris", "models/iris:1", 2)).unwrap();
    let pp = PatchParams::apply("ds-deployer").force();
    deps.patch("iris", &pp, &Patch::Apply(&desired))
        .await
        .unwrap();
    let settled = eventually("rollout done", || {
        let deps = deps.clone();
        async move {
            let d = deps.get("iris").await.ok()?;
            (d.status.as_ref()?.available_replicas == Some(2)).then_some(d)
        }
    })
    .await;
    let again = deps
        .patch("iris", &pp, &Patch::Apply(&desired))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        settled.metadata.resource_version
    );
    assert_eq!(again.metadata.generation, Some(1));

    // A changed image is an in-place update: same uid, generation 2, new rollout.
    let mut changed = desired.clone();
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("models/iris:2");
    let updated = deps
        .patch("iris", &pp, &Patch::Apply(&changed))
        .await
        .unwrap();
    assert_eq!(updated.metadata.uid, settled.metadata.uid);
    assert_eq!(updated.metadata.generation, Some(2));
    eventually("second rollout done", || {
        let deps = deps.clone();
        async move {
            let s = deps.get("iris").await.ok()?.status?;
            (s.observed_generation == Some(2) && s.available_replicas == Some(2)).then_some(())
        }
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_apply_reports_unknown_fields_and_get_prints_tables() {
    let k = Kubectl::start().await;
    let typo = manifest("nginx:1.27", 1).replace("  replicas: 1", "  replicaz: 1");
    let file = k.write("typo.yaml", &typo);
    let out = k.run(&["apply", "-f", &file]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unknown field \"spec.replicaz\""),
        "{}",
        out.stderr
    );

    let file = k.write("app.yaml", &manifest("nginx:1.27", 2));
    k.ok(&["apply", "-f", &file]).await;
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "fid",
        "--timeout=60s",
    ])
    .await;
    let table = k.ok(&["get", "deployment", "web", "-n", "fid"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(table.lines().nth(1).unwrap().starts_with("web"), "{table}");
    assert!(table.contains("2/2"), "{table}");
    let svc = k.ok(&["get", "service", "web", "-n", "fid"]).await;
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    let pods = k.ok(&["get", "pods", "-n", "fid", "-l", "app=web"]).await;
    assert_eq!(pods.matches("Running").count(), 2, "{pods}");
    k.sim.shutdown().await;
}

#[tokio::test]
async fn watcher_with_streaming_lists_and_paged_initial_list() {
    let sim = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "default");
    for i in 0..12 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("s-{i}"), json!({"team": "s"})),
        )
        .await
        .unwrap();
    }
    for config in [
        watcher::Config::default()
            .labels("team=s")
            .streaming_lists(),
        watcher::Config::default().labels("team=s").page_size(5),
    ] {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let stream = watcher(cms.clone(), config)
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(stream);
            while s.next().await.is_some() {}
        });
        reader.wait_until_ready().await.unwrap();
        assert_eq!(reader.state().len(), 12);
        task.abort();
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn lease_replace_with_stale_version_conflicts() {
    use k8s_openapi::api::coordination::v1::Lease;
    let sim = sim().await;
    let leases: Api<Lease> = Api::namespaced(sim.client(), "default");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ds-agent"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    // Two candidates read the same version; the first replace wins, the second conflicts.
    let mut a = created.clone();
    a.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let mut b = created.clone();
    b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("ds-agent", &PostParams::default(), &a)
        .await
        .unwrap();
    let (code, reason) = api_err(
        leases
            .replace("ds-agent", &PostParams::default(), &b)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let held = leases.get("ds-agent").await.unwrap();
    assert_eq!(held.spec.unwrap().holder_identity.as_deref(), Some("a2"));
    sim.shutdown().await;
}

#[tokio::test]
async fn namespace_restriction_answers_like_namespaced_rbac_to_kubectl() {
    let k = Kubectl::start().await;
    let file = k.write("app.yaml", &manifest("nginx:1.27", 1));
    k.ok(&["apply", "-f", &file]).await;
    k.sim
        .faults()
        .restrict_to_namespaces(Some(vec!["fid".into()]));

    // Inside the namespace everything works; cluster scope and other namespaces are 403.
    let inside = k
        .ok(&["get", "deployments", "-n", "fid", "-o", "name"])
        .await;
    assert_eq!(inside.trim(), "deployment.apps/web");
    let all = k.run(&["get", "deployments", "--all-namespaces"]).await;
    assert!(!all.ok, "a cluster-wide list must be refused");
    assert!(
        all.stderr.contains(
            "deployments.apps is forbidden: User \"system:serviceaccount:ds-sim:restricted\" \
             cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        ),
        "{}",
        all.stderr
    );
    let other = k.run(&["get", "services", "-n", "default"]).await;
    assert!(!other.ok);
    assert!(
        other.stderr.contains("in the namespace \"default\""),
        "{}",
        other.stderr
    );
    let namespaces = k.run(&["get", "namespaces"]).await;
    assert!(!namespaces.ok, "namespaces are cluster-scoped");

    k.sim.faults().restrict_to_namespaces(None);
    k.ok(&["get", "deployments", "--all-namespaces"]).await;
}

#[tokio::test]
async fn kubectl_create_commands_send_protobuf_and_work() {
    let k = Kubectl::start().await;
    let created = [
        (
            vec!["create", "namespace", "models"],
            "namespace/models created",
        ),
        (
            vec![
                "create",
                "deployment",
                "web",
                "--image=nginx:1.27",
                "--replicas=2",
                "--port=8080",
                "-n",
                "models",
            ],
            "deployment.apps/web created",
        ),
        (
            vec![
                "create",
                "configmap",
                "cfg",
                "--from-literal=a=1",
                "-n",
                "models",
            ],
            "configmap/cfg created",
        ),
        (
            vec![
                "create",
                "secret",
                "generic",
                "creds",
                "--from-literal=token=abc",
                "-n",
                "models",
            ],
            "secret/creds created",
        ),
        (
            vec!["create", "serviceaccount", "robot", "-n", "models"],
            "serviceaccount/robot created",
        ),
        (
            vec![
                "create",
                "service",
                "clusterip",
                "web",
                "--tcp=80:8080",
                "-n",
                "models",
            ],
            "service/web created",
        ),
    ];
    for (args, said) in created {
        let out = k.ok(&args).await;
        assert!(out.contains(said), "kubectl {args:?}: {out}");
    }
    let ns = k.json(&["get", "namespace", "models"]).await;
    assert_eq!(ns["status"]["phase"], "Active");
    let dep = k.json(&["get", "deployment", "web", "-n", "models"]).await;
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["selector"]["matchLabels"]["app"], "web");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        dep["spec"]["strategy"]["type"], "RollingUpdate",
        "defaulted"
    );
    let cm = k.json(&["get", "configmap", "cfg", "-n", "models"]).await;
    assert_eq!(cm["data"]["a"], "1");
    let secret = k.json(&["get", "secret", "creds", "-n", "models"]).await;
    assert_eq!(secret["data"]["token"], "YWJj", "base64 of abc");
    let svc = k.json(&["get", "service", "web", "-n", "models"]).await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["selector"]["app"], "web");
    k.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "models",
        "--timeout=20s",
    ])
    .await;
}
