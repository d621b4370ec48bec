use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
};

use super::*;

fn container(probe: Probe) -> Container {
    Container {
        name: "app".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        readiness_probe: Some(probe),
        ..Default::default()
    }
}

fn http(port: IntOrString) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port,
            path: Some("healthz".into()),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Probe".into(),
                value: "1".into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn kubelet_defaults_fill_a_bare_probe() {
    let c = container(http(IntOrString::Int(80)));
    let s = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert_eq!(s.period, Duration::from_secs(10));
    assert_eq!(s.timeout, Duration::from_secs(1));
    assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
    assert_eq!(s.initial_delay, Duration::ZERO);
    assert_eq!(
        s.handler,
        Handler::Http {
            scheme: Scheme::Http,
            host: None,
            port: 80,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "1".into())],
        }
    );
}

#[test]
fn https_is_read_in_any_case_and_other_schemes_are_refused() {
    let mut p = http(IntOrString::Int(8443));
    p.http_get.as_mut().unwrap().scheme = Some("HTTPS".into());
    let c = container(p.clone());
    let s = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert!(matches!(
        s.handler,
        Handler::Http {
            scheme: Scheme::Https,
            port: 8443,
            ..
        }
    ));
    p.http_get.as_mut().unwrap().scheme = Some("https".into());
    let c = container(p.clone());
    let s = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert!(matches!(
        s.handler,
        Handler::Http {
            scheme: Scheme::Https,
            ..
        }
    ));
    p.http_get.as_mut().unwrap().scheme = Some("FTP".into());
    let c = container(p);
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert!(
        e.starts_with("readinessProbe.httpGet.scheme: Unsupported value: \"FTP\""),
        "{e}"
    );
}

#[test]
fn grpc_probes_are_read_with_an_empty_service_by_default() {
    let probe = |service: Option<&str>| Probe {
        grpc: Some(GRPCAction {
            port: 9000,
            service: service.map(str::to_string),
        }),
        ..Default::default()
    };
    let c = container(probe(None));
    let s = Spec::from_k8s(Kind::Liveness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert_eq!(
        s.handler,
        Handler::Grpc {
            port: 9000,
            service: String::new()
        }
    );
    let c = container(probe(Some("db")));
    let s = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert_eq!(
        s.handler,
        Handler::Grpc {
            port: 9000,
            service: "db".into()
        }
    );
}

#[test]
fn named_ports_resolve_against_the_container() {
    let c = container(http(IntOrString::String("http".into())));
    let s = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap();
    assert!(matches!(s.handler, Handler::Http { port: 8080, .. }));
    let c = container(http(IntOrString::String("metrics".into())));
    let e = Spec::from_k8s(Kind::Liveness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert_eq!(
        e,
        "livenessProbe.httpGet.port: Invalid value: \"metrics\": no container port has this name"
    );
    let c = container(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(70000),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert!(
        e.starts_with("readinessProbe.tcpSocket.port: Invalid value: 70000"),
        "{e}"
    );
}

#[test]
fn probes_without_a_usable_handler_say_why() {
    let c = container(Probe::default());
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert_eq!(e, "readinessProbe: must specify a handler type");
    let c = container(Probe {
        exec: Some(ExecAction {
            command: Some(vec![]),
        }),
        ..Default::default()
    });
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert_eq!(e, "readinessProbe.exec.command: Required value");
    let c = container(Probe {
        grpc: Some(GRPCAction {
            port: 0,
            service: None,
        }),
        ..Default::default()
    });
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert_eq!(
        e,
        "readinessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535"
    );
    let mut p = http(IntOrString::Int(80));
    p.http_get.as_mut().unwrap().http_headers = Some(vec![HTTPHeader {
        name: "X".into(),
        value: "a\r\nInjected: 1".into(),
    }]);
    let c = container(p);
    let e = Spec::from_k8s(Kind::Readiness, c.readiness_probe.as_ref().unwrap(), &c).unwrap_err();
    assert_eq!(e, "readinessProbe.httpGet.httpHeaders[0]: Invalid value");
}

fn spec(kind: Kind, success: u32, failure: u32) -> Spec {
    Spec {
        kind,
        handler: Handler::Tcp {
            host: None,
            port: 1,
        },
        initial_delay: Duration::ZERO,
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        success_threshold: success,
        failure_threshold: failure,
        termination_grace: None,
    }
}

#[test]
fn a_result_changes_only_past_its_threshold() {
    let s = spec(Kind::Readiness, 2, 3);
    let mut c = Counter::new(s.initial());
    assert!(!c.result());
    assert_eq!(c.observe(true, &s), None);
    assert_eq!(c.observe(false, &s), None);
    assert_eq!(c.observe(true, &s), None);
    assert_eq!(c.observe(true, &s), Some(true));
    assert_eq!(c.observe(true, &s), None);
    assert_eq!(c.observe(false, &s), None);
    assert_eq!(c.observe(false, &s), None);
    assert_eq!(c.observe(false, &s), Some(false));
    assert_eq!(c.observe(false, &s), None);
}

#[test]
fn liveness_starts_passed_and_startup_unknown() {
    let s = spec(Kind::Liveness, 1, 1);
    let mut c = Counter::new(s.initial());
    assert!(c.result());
    assert_eq!(c.observe(true, &s), None);
    assert_eq!(c.observe(false, &s), Some(false));
    let s = spec(Kind::Startup, 1, 2);
    let mut c = Counter::new(s.initial());
    assert!(!c.result());
    assert_eq!(c.observe(false, &s), None);
    // A startup probe that fails its threshold is a change too: the
    // worker kills the container.
    assert_eq!(c.observe(false, &s), Some(false));
}

#[test]
fn spec_headers_replace_ours_and_connection_stays_close() {
    let h = http_headers(
        "10.0.0.1",
        80,
        &[
            ("user-agent".into(), "mine".into()),
            ("Connection".into(), "keep-alive".into()),
        ],
    );
    let get = |k: &str| {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("User-Agent"), Some("mine"));
    assert_eq!(get("Host"), Some("10.0.0.1:80"));
    assert_eq!(get("Connection"), Some("close"));
}
