//! A real Kafka-protocol broker for tests: Tansu on a free port with a fresh sqlite
//! file in a temporary directory, stopped when dropped. `scripts/test.sh` installs it;
//! the binary is found through `TANSU_BIN`, then `~/.cargo/bin/tansu`, then `PATH`.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
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

pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("tansu")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Broker {
            child: None,
            port: free_port(),
            dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory: a fresh file per broker.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "failed to start Tansu ({}): {e}; run scripts/test.sh, which installs it",
                    tansu_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker process (the data file stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data file.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client of this broker.
    pub fn client(&self) -> Client {
        Client {
            bootstrap: self.bootstrap(),
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
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Admin, producer and reader helpers for any Kafka-protocol cluster (Tansu, or
/// librdkafka's mock cluster).
pub struct Client {
    pub bootstrap: String,
}

impl Client {
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    pub fn create_topic(&self, name: &str, partitions: i32, compact: bool) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
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
    }

    /// Produces records (key, value) to a partition chosen by the broker's partitioner
    /// (or the given one), in bounded chunks so the broker is never flooded.
    pub fn produce(&self, topic: &str, records: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let producer: BaseProducer = self
            .config()
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "20000")
            .create()
            .unwrap();
        for chunk in records.chunks(5_000) {
            for (k, v) in chunk {
                let mut r = BaseRecord::<[u8], [u8]>::to(topic).payload(&v[..]);
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
            // Generous: Tansu has been seen to stall for over a minute under a long soak.
            producer.flush(Duration::from_secs(300)).unwrap();
        }
    }

    /// Reads a whole topic (every partition up to its current high watermark).
    pub fn read_all(&self, topic: &str) -> Vec<Read> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", "mallquest-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let mut tpl = TopicPartitionList::new();
        let mut want = BTreeMap::new();
        for p in &partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .unwrap();
            if high > 0 {
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
        // Times out only without progress: a large topic on a slow broker takes long.
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
                Some(Err(e)) => eprintln!("read error on {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}
