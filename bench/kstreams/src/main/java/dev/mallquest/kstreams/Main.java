package dev.mallquest.kstreams;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.config.TopicConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * The mallquest fold written with Kafka Streams, for the drain benchmark: reads RECEIPTS
 * records of the topic from the beginning, closes (committing the last transaction), prints
 * one line and exits. Same CLI as bench/quix_fold.py.
 *
 * <pre>
 * java -jar kstreams-fold.jar BROKER TOPIC RECEIPTS STATE_DIR [GROUP] [SUFFIX]
 *   GROUP: the application.id (default kstreams-bench); SUFFIX is appended to the output
 *   topics' names (kstreams-projections, kstreams-dlq), created if missing.
 * Env: KSTREAMS_THREADS (stream threads, default 1), KSTREAMS_STORE_MULTIPLIERS
 *   ("s-07=200,s-13=150": percent per store; default none).
 * </pre>
 */
public final class Main {
    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: kstreams-fold BROKER TOPIC RECEIPTS STATE_DIR [GROUP] [SUFFIX]");
            System.exit(2);
        }
        long started = System.nanoTime();
        String broker = args[0], topic = args[1], stateDir = args[3];
        long total = Long.parseLong(args[2]);
        String group = args.length > 4 ? args[4] : "kstreams-bench";
        String suffix = args.length > 5 ? args[5] : "";
        String projections = "kstreams-projections" + suffix;
        String dlq = "kstreams-dlq" + suffix;
        int threads = Integer.parseInt(System.getenv().getOrDefault("KSTREAMS_THREADS", "1"));

        createOutputTopics(broker, topic, projections, dlq);
        FoldTopology.Counters counters = new FoldTopology.Counters(total);
        Properties config = FoldTopology.config(group, broker, stateDir, threads);
        KafkaStreams streams = new KafkaStreams(
                FoldTopology.build(topic, projections, dlq, Rules.fromEnv(), counters), config);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("kstreams: stream thread failed: " + e);
            e.printStackTrace();
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((next, previous) -> {
            if (next == KafkaStreams.State.ERROR || next == KafkaStreams.State.PENDING_ERROR) {
                counters.drained.countDown();
            }
        });
        streams.start();
        counters.drained.await();
        long drainedAt = System.nanoTime();
        long seen = counters.seen.get();
        // A clean close commits the last transaction: the drained records are then folded and stored.
        boolean closed = streams.close(Duration.ofMinutes(2));
        double secs = (System.nanoTime() - started) / 1e9;
        if (seen < total || !closed) {
            System.err.printf("kstreams: stopped after %d of %d records (%s)%n", seen, total,
                    closed ? "the application failed" : "close timed out");
            System.exit(1);
        }
        System.out.printf(java.util.Locale.ROOT, "kstreams: folded %d records in %.2f s (applied %d, duplicates %d, rejected %d, level-ups %d;"
                        + " first record %.2f s after start, last %.2f s)%n",
                seen, secs, counters.applied.get(), counters.duplicates.get(), counters.rejected.get(),
                counters.levelUps.get(), (counters.firstNanos - started) / 1e9, (drainedAt - started) / 1e9);
        System.exit(0);
    }

    /** The output topics, as many partitions as the input, the projections compacted (as mallquest's). */
    private static void createOutputTopics(String broker, String input, String projections, String dlq)
            throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, broker))) {
            Set<String> existing = admin.listTopics().names().get(30, TimeUnit.SECONDS);
            List<NewTopic> missing = new ArrayList<>();
            if (!existing.contains(projections) || !existing.contains(dlq)) {
                int parts = admin.describeTopics(List.of(input)).allTopicNames().get(30, TimeUnit.SECONDS)
                        .get(input).partitions().size();
                if (!existing.contains(projections)) {
                    missing.add(new NewTopic(projections, parts, (short) -1)
                            .configs(Map.of(TopicConfig.CLEANUP_POLICY_CONFIG, TopicConfig.CLEANUP_POLICY_COMPACT)));
                }
                if (!existing.contains(dlq)) missing.add(new NewTopic(dlq, parts, (short) -1));
                admin.createTopics(missing).all().get(30, TimeUnit.SECONDS);
            }
        }
    }
}
