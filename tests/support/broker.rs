//! Real Apache Kafka for tests: a one-node KRaft broker (broker and controller combined),
//! or a three-node KRaft cluster, on free ports with fresh data directories.
//!
//! The jars come from `scripts/install-kafka.sh` (Maven Central, cached); its cache path
//! is taken from `MALLQUEST_KAFKA_HOME`, which `scripts/test.sh` sets, else the script is
//! run once to find (or make) it. Each broker JVM runs under a small shell that kills it
//! when this test process goes away, however it goes (a panic, an abort, SIGKILL): the
//! shell holds the read end of a pipe whose write end only this process holds. Dropping a
//! [`Broker`] or [`Cluster`] stops its JVMs at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// How long a broker may take from `java` to "Kafka Server started" on a busy 2-core box
/// (seen: 5 s alone, over 90 s for three at once beside two benchmarks).
const START_BOUND: Duration = Duration::from_secs(240);

/// The install's root (holding `libs/` and `log4j2.properties`).
pub fn kafka_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        if let Some(h) = std::env::var_os("MALLQUEST_KAFKA_HOME") {
            return PathBuf::from(h);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-kafka.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: cannot get Apache Kafka",
            script.display()
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what
/// `kafka-storage random-uuid` prints), made here to save a JVM start.
fn cluster_id() -> String {
    use base64::Engine;
    // Never one that starts with '-' (Kafka's own `Uuid.randomUuid` rule): the tools
    // would read it as an option.
    loop {
        let bytes: [u8; 16] = rand::random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// One broker process (a node of a cluster, or a cluster of one).
pub struct Node {
    pub id: u32,
    pub port: u16,
    pub controller_port: u16,
    dir: PathBuf,
    /// The shell running the JVM; its process group is the JVM's.
    child: Option<Child>,
    /// The reaper's pipe: closing it (this process exiting) kills the JVM.
    _lifeline: Option<ChildStdin>,
    starts: u32,
}

impl Node {
    fn properties(&self) -> PathBuf {
        self.dir.join("server.properties")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn java(&self, heap_mb: u32) -> Command {
        let home = kafka_home();
        let mut c = Command::new("java");
        c.arg(format!("-Xms{}m", heap_mb.min(256)))
            .arg(format!("-Xmx{heap_mb}m"))
            .args([
                // C1 only: a test broker starts sooner and compiles less on 2 cores.
                "-XX:TieredStopAtLevel=1",
                "-XX:+UseSerialGC",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                home.join("log4j2.properties").display()
            ))
            .arg(format!("-Dkafka.logs.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(format!("{}/libs/*", home.display()));
        c
    }

    fn format(&self, cluster_id: &str, standalone: bool) {
        let mut c = self.java(256);
        c.args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
            .arg(self.properties());
        if standalone {
            c.arg("--standalone");
        }
        let out = c.output().expect("java (Java 17) must be installed");
        assert!(
            out.status.success(),
            "formatting node {}: {}{}",
            self.id,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the JVM (it must not be running); does not wait for it.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        writeln!(&log, "===== start {} =====", self.starts).unwrap();
        let java = self.java(512);
        let mut argv: Vec<String> = vec![java.get_program().to_string_lossy().into_owned()];
        argv.extend(java.get_args().map(|a| a.to_string_lossy().into_owned()));
        argv.push("kafka.Kafka".into());
        argv.push(self.properties().display().to_string());
        // The JVM in the background; the shell waits on its stdin (our pipe) and kills the
        // JVM when the pipe closes, then exits with the JVM's status otherwise.
        // (A background job's stdin is /dev/null unless redirected: hence fd 3.)
        let script = r#"
            exec 3<&0
            "$@" </dev/null 3<&- &
            jvm=$!
            { cat <&3 >/dev/null; kill -9 "$jvm" 2>/dev/null; } &
            exec 3<&-
            wait "$jvm"
        "#;
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("kafka-node")
            .args(&argv)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("bash must be installed");
        self._lifeline = child.stdin.take();
        self.child = Some(child);
    }

    /// Waits until this start logged "Kafka Server started" and its port accepts.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_BOUND;
        let marker = format!("===== start {} =====", self.starts);
        loop {
            let log = self.log();
            let this_start = log.rsplit(&marker).next().unwrap_or("");
            if this_start.contains("Kafka Server started")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(c) = &mut self.child {
                if let Some(status) = c.try_wait().unwrap() {
                    panic!(
                        "Kafka node {} exited ({status}) while starting:\n{}",
                        self.id,
                        tail(this_start, 60)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "Kafka node {} not ready within {START_BOUND:?}:\n{}",
                self.id,
                tail(this_start, 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the JVM (SIGKILL to its process group) and waits for it; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        self._lifeline = None;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Properties every test node shares: small internal topics (the first group join is
/// faster), no initial rebalance delay, log cleaning often enough to see compaction, and a
/// session minimum below the 6 s default (only the failover measurement sets a shorter one).
fn common_properties(replication: u32, min_isr: u32) -> String {
    format!(
        "controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
         offsets.topic.replication.factor={replication}\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor={replication}\n\
         transaction.state.log.min.isr={min_isr}\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor={replication}\n\
         share.coordinator.state.topic.min.isr={min_isr}\n\
         default.replication.factor={replication}\n\
         min.insync.replicas={min_isr}\n\
         group.initial.rebalance.delay.ms=0\n\
         group.min.session.timeout.ms=1000\n\
         num.partitions=1\n\
         auto.create.topics.enable=true\n\
         log.cleaner.backoff.ms=1000\n\
         num.network.threads=2\n\
         num.io.threads=2\n\
         background.threads=2\n\
         num.recovery.threads.per.data.dir=1\n"
    )
}

/// A one-node Apache Kafka (broker and controller in one JVM), stopped when dropped.
pub struct Broker {
    node: Node,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    /// A broker whose client listener is on `port` (which must be free).
    pub fn start_on(port: u16) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node1");
        std::fs::create_dir_all(&node_dir).unwrap();
        let cport = free_port();
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             log.dirs={}\n{}",
            node_dir.join("data").display(),
            common_properties(1, 1)
        );
        std::fs::write(node_dir.join("server.properties"), props).unwrap();
        let mut node = Node {
            id: 1,
            port,
            controller_port: cport,
            dir: node_dir,
            child: None,
            _lifeline: None,
            starts: 0,
        };
        node.format(&cluster_id(), true);
        node.spawn();
        node.wait_ready();
        Broker { node, port, dir }
    }

    /// Stops the broker at once (SIGKILL; its data stays).
    pub fn stop(&mut self) {
        self.node.kill();
    }

    /// Starts it again on the same ports and data, and waits until it is ready.
    pub fn restart(&mut self) {
        self.node.kill();
        self.node.spawn();
        self.node.wait_ready();
    }

    pub fn bootstrap(&self) -> String {
        self.node.bootstrap()
    }

    /// A client of this broker.
    pub fn client(&self) -> Client {
        Client {
            bootstrap: self.bootstrap(),
            replication: 1,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32, compact: bool) {
        self.client().create_topic(name, partitions, compact);
    }

    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        self.client().produce(topic, records);
    }

    pub fn read_all(&self, topic: &str) -> Vec<Read> {
        self.client().read_all(topic)
    }

    pub fn log(&self) -> String {
        self.node.log()
    }
}

/// A record to produce: key, value and Kafka timestamp (ms), if given.
pub type Timed = (Option<Vec<u8>>, Vec<u8>, Option<i64>);

/// Three KRaft nodes on one machine, each broker and controller (a static three-voter
/// quorum), replication factor 3 and `min.insync.replicas = 2` for every topic.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let id = cluster_id();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(&node_dir).unwrap();
            let props = format!(
                "process.roles=broker,controller\n\
                 node.id={}\n\
                 controller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
                 log.dirs={}\n{}",
                i + 1,
                node_dir.join("data").display(),
                common_properties(3, 2)
            );
            std::fs::write(node_dir.join("server.properties"), props).unwrap();
            nodes.push(Node {
                id: i as u32 + 1,
                port: *port,
                controller_port: *cport,
                dir: node_dir,
                child: None,
                _lifeline: None,
                starts: 0,
            });
        }
        // Formats in parallel (a JVM each), then all three start together: a node exits
        // if the quorum does not form within `initial.broker.registration.timeout.ms`.
        std::thread::scope(|s| {
            for n in &nodes {
                let id = &id;
                s.spawn(move || n.format(id, false));
            }
        });
        for n in &mut nodes {
            n.spawn();
        }
        for n in &mut nodes {
            n.wait_ready();
        }
        Cluster { nodes, _dir: dir }
    }

    /// Every running node's address.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(Node::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> Client {
        Client {
            bootstrap: self.bootstrap(),
            replication: 3,
        }
    }

    /// Index in `nodes` of the node leading a partition (by metadata).
    pub fn leader_of(&self, topic: &str, partition: i32) -> usize {
        let id = self.client().leader_of(topic, partition);
        self.nodes
            .iter()
            .position(|n| n.id as i32 == id)
            .unwrap_or_else(|| panic!("leader {id} of {topic}/{partition} is not a node"))
    }

    /// SIGKILLs a node (its data stays).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts a killed node again on its data and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].spawn();
        self.nodes[i].wait_ready();
    }

    /// Waits until every partition of every topic (the internal ones too: transactions
    /// and group offsets) has all three replicas in sync again. A node restarted
    /// catches up topic by topic; a topic still catching up when another node dies is
    /// left with one in-sync replica, below `min.insync.replicas`, and refuses writes.
    #[allow(dead_code)] // used by the cluster tests only
    pub fn wait_all_in_sync(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let behind = self.client().under_replicated(3);
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not fully in sync after {within:?}: {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every partition of `topic` has all three replicas in sync again.
    pub fn wait_in_sync(&self, topic: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.client().min_isr_of(topic) == 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} not fully in sync after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A background producer at a steady rate ([`Client::produce_at_rate`]).
pub struct Steady {
    handle: std::thread::JoinHandle<()>,
    hurry: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Steady {
    /// Sends the records still waiting at once, without the rate's pauses.
    pub fn hurry(&self) {
        self.hurry.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub fn join(self) -> std::thread::Result<()> {
        self.handle.join()
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Admin, producer and reader helpers for any Kafka cluster (Apache Kafka, or
/// librdkafka's mock cluster).
pub struct Client {
    pub bootstrap: String,
    /// Replication factor of the topics it creates.
    pub replication: i32,
}

impl Client {
    pub fn new(bootstrap: impl Into<String>) -> Client {
        Client {
            bootstrap: bootstrap.into(),
            replication: 1,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    fn metadata(&self, topic: &str) -> rdkafka::metadata::Metadata {
        let consumer: BaseConsumer = self.config().create().unwrap();
        retry_transient(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))
    }

    /// The broker id leading a partition.
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let md = self.metadata(topic);
        md.topics()[0]
            .partitions()
            .iter()
            .find(|p| p.id() == partition)
            .unwrap()
            .leader()
    }

    /// The smallest in-sync replica count over the topic's partitions.
    /// The topics with a partition whose in-sync replicas are fewer than `replicas`,
    /// internal topics included.
    #[allow(dead_code)] // used by the cluster tests only
    pub fn under_replicated(&self, replicas: usize) -> Vec<String> {
        let consumer: BaseConsumer = self.config().create().unwrap();
        let md = retry_transient(|| consumer.fetch_metadata(None, Duration::from_secs(10)));
        md.topics()
            .iter()
            .filter(|t| t.partitions().iter().any(|p| p.isr().len() < replicas))
            .map(|t| t.name().to_owned())
            .collect()
    }

    pub fn min_isr_of(&self, topic: &str) -> usize {
        let md = self.metadata(topic);
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.isr().len())
            .min()
            .unwrap_or(0)
    }

    pub fn create_topic(&self, name: &str, partitions: i32, compact: bool) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(self.replication));
        if compact {
            t = t.set("cleanup.policy", "compact");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = rt
            .block_on(admin.create_topics([&t], &AdminOptions::new()))
            .unwrap();
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
        // Creation returns before every broker knows the leaders: wait until metadata
        // names a leader for every partition, so that the first produce does not race it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let md = self.metadata(name);
            let t = &md.topics()[0];
            if t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions().iter().all(|p| p.leader() >= 0)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} has no leaders after 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes every record of `topic` now in it (what retention does to old segments):
    /// the log start moves to the high watermark of each partition.
    pub fn delete_all_records(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::End).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = rt
            .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
            .unwrap();
        for e in res.elements() {
            assert!(
                e.error().is_ok(),
                "deleting {topic}/{}: {:?}",
                e.partition(),
                e.error()
            );
        }
    }

    /// The first offset still in each partition of `topic`.
    pub fn log_starts(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.config().create().unwrap();
        (0..partitions)
            .map(|p| {
                retry_transient(|| consumer.fetch_watermarks(topic, p, Duration::from_secs(10))).0
            })
            .collect()
    }

    /// Produces records (key, value) to the partition librdkafka's partitioner picks, in
    /// bounded chunks, every one acknowledged by all in-sync replicas.
    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let timed: Vec<_> = records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect();
        self.produce_timed(topic, &timed);
    }

    /// [`Self::produce`] with each record's Kafka timestamp (ms), where given.
    pub fn produce_timed(&self, topic: &str, records: &[Timed]) {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "20000")
            .create()
            .unwrap();
        for chunk in records.chunks(5_000) {
            for (k, v, ts) in chunk {
                let mut r = BaseRecord::<[u8], [u8]>::to(topic).payload(&v[..]);
                if let Some(k) = k {
                    r = r.key(&k[..]);
                }
                if let Some(ts) = ts {
                    r = r.timestamp(*ts);
                }
                let mut r = Some(r);
                while let Some(rec) = r.take() {
                    if let Err((_, rec)) = producer.send(rec) {
                        producer.poll(Duration::from_millis(20));
                        r = Some(rec);
                    }
                }
            }
            producer.flush(Duration::from_secs(120)).unwrap();
        }
    }

    /// Produces `records` in the background at a steady `per_sec` (as POS terminals do),
    /// through one producer that rides out broker faults (it retries for 5 minutes).
    /// [`Steady::hurry`] sends the rest at once.
    pub fn produce_at_rate(
        &self,
        topic: &str,
        records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
        per_sec: usize,
    ) -> Steady {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "300000")
            .create()
            .unwrap();
        let topic = topic.to_owned();
        let hurry = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hurried = std::sync::Arc::clone(&hurry);
        let handle = std::thread::spawn(move || {
            let tick = Duration::from_millis(100);
            let per_tick = (per_sec / 10).max(1);
            let start = Instant::now();
            for (i, chunk) in records.chunks(per_tick).enumerate() {
                for (k, v) in chunk {
                    let mut r = BaseRecord::<[u8], [u8]>::to(&topic).payload(&v[..]);
                    if let Some(k) = k {
                        r = r.key(&k[..]);
                    }
                    let mut r = Some(r);
                    while let Some(rec) = r.take() {
                        if let Err((_, rec)) = producer.send(rec) {
                            producer.poll(Duration::from_millis(20));
                            r = Some(rec);
                        }
                    }
                }
                producer.poll(Duration::ZERO);
                if !hurried.load(std::sync::atomic::Ordering::Relaxed) {
                    let next = start + tick * (i as u32 + 1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            producer
                .flush(Duration::from_secs(300))
                .expect("produce_at_rate: not all records delivered");
        });
        Steady { handle, hurry }
    }

    /// Reads a whole topic (every partition up to its current high watermark).
    pub fn read_all(&self, topic: &str) -> Vec<Read> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "mallquest-test-reader")
            .set("enable.auto.commit", "false")
            // The end of a partition whose last records are a transaction's: its commit
            // marker takes the last offset but is never delivered.
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        // A broker that has just restarted answers metadata and offset requests with
        // "not leader" until its partitions have leaders again: retried, bounded.
        let md = retry_transient(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)));
        let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        let mut want = BTreeMap::new();
        for p in &partitions {
            let (low, high) =
                retry_transient(|| consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)));
            if high > low {
                want.insert(*p, high);
                tpl.add_partition_offset(topic, *p, Offset::Beginning)
                    .unwrap();
            }
        }
        let mut out = Vec::new();
        if want.is_empty() {
            return out;
        }
        consumer.assign(&tpl).unwrap();
        // Times out only without progress.
        let patience = Duration::from_secs(60);
        let mut deadline = Instant::now() + patience;
        let mut done: BTreeMap<i32, bool> = want.keys().map(|p| (*p, false)).collect();
        while done.values().any(|d| !d) {
            assert!(
                Instant::now() < deadline,
                "reading {topic} timed out: nothing read for {patience:?}"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    deadline = Instant::now() + patience;
                    let mut headers = BTreeMap::new();
                    if let Some(h) = m.headers() {
                        for h in h.iter() {
                            headers.insert(
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            );
                        }
                    }
                    if m.offset() + 1 >= want[&m.partition()] {
                        done.insert(m.partition(), true);
                    }
                    out.push(Read {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    done.insert(p, true);
                }
                Some(Err(e)) => eprintln!("read error on {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

/// Retries a metadata or offsets request for up to 60 s while the broker answers with an
/// error (a leader election after a restart); panics with the last error after that.
fn retry_transient<T>(mut f: impl FnMut() -> Result<T, rdkafka::error::KafkaError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after a transient broker error: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("broker request failed for 60 s: {e}"),
        }
    }
}
