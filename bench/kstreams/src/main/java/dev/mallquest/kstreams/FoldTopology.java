package dev.mallquest.kstreams;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.state.Stores;

/**
 * receipts (key user_id, JSON value) -> fold (stores: users, ledger, marks; RocksDB, logged,
 * cached) -> projections (key user_id, projection JSON) and dlq (original record + reason headers).
 */
public final class FoldTopology {
    public static final String USERS = "users";
    public static final String LEDGER = "ledger";
    public static final String MARKS = "marks";
    public static final String PROJECTIONS_SINK = "projections";
    public static final String DLQ_SINK = "dlq";

    private FoldTopology() {}

    /** Records seen and what became of them, over all tasks; {@link #drained} opens at {@code target} records. */
    public static final class Counters {
        public final AtomicLong seen = new AtomicLong();
        public final AtomicLong applied = new AtomicLong();
        public final AtomicLong duplicates = new AtomicLong();
        public final AtomicLong rejected = new AtomicLong();
        public final AtomicLong levelUps = new AtomicLong();
        public final CountDownLatch drained = new CountDownLatch(1);
        /** System.nanoTime() when the first record was processed (0 before). */
        public volatile long firstNanos;
        private final long target;

        public Counters(long target) {
            this.target = target;
        }

        void seen() {
            long n = seen.incrementAndGet();
            if (n == 1) firstNanos = System.nanoTime();
            if (n == target) drained.countDown();
        }
    }

    public static Topology build(String receiptsTopic, String projectionsTopic, String dlqTopic, Rules rules,
                                 Counters counters) {
        Topology t = new Topology();
        t.addSource("receipts", new ByteArrayDeserializer(), new ByteArrayDeserializer(), receiptsTopic);
        t.addProcessor("fold", () -> new FoldProcessor(rules, counters), "receipts");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(USERS),
                Serdes.String(), UserState.SERDE).withCachingEnabled(), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(LEDGER),
                Serdes.String(), LedgerEntry.SERDE).withCachingEnabled(), "fold");
        t.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(MARKS),
                Serdes.Integer(), Serdes.Long()).withCachingEnabled(), "fold");
        t.addSink(PROJECTIONS_SINK, projectionsTopic, new ByteArraySerializer(), new ByteArraySerializer(), "fold");
        t.addSink(DLQ_SINK, dlqTopic, new ByteArraySerializer(), new ByteArraySerializer(), "fold");
        return t;
    }

    /** The application's settings: exactly-once v2, from the beginning, defaults otherwise. */
    public static Properties config(String applicationId, String bootstrap, String stateDir, int threads) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        return p;
    }
}
