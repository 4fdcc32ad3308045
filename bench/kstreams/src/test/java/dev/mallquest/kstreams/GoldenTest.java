package dev.mallquest.kstreams;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.TopologyTestDriver;
import org.apache.kafka.streams.test.TestRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The team's golden vectors (tests/golden/, read from the project tree) through the real
 * topology: the last projection per user equals expected-projections.jsonl (instants
 * compared as instants) and the DLQ holds exactly the offsets and reasons of expected-dlq.jsonl.
 */
class GoldenTest {
    private static final Path GOLDEN = Path.of("../../tests/golden");
    private static final ObjectMapper JSON = new ObjectMapper();

    @Test
    void goldenVectorsFoldToTheExpectedProjectionsAndDeadLetters(@TempDir Path stateDir) throws IOException {
        // tests/golden/README.md: default rules, store multipliers s-07 = 200 and s-13 = 150 (percent).
        Rules rules = new Rules();
        rules.storeMultipliers.put("s-07", 200L);
        rules.storeMultipliers.put("s-13", 150L);
        FoldTopology.Counters counters = new FoldTopology.Counters(Long.MAX_VALUE);
        var topology = FoldTopology.build("receipts", "projections", "dlq", rules, counters);
        var config = FoldTopology.config("golden", "unused:9092", stateDir.toString(), 1);

        Map<String, JsonNode> projections = new TreeMap<>();
        List<String> deadLetters = new ArrayList<>();
        int records = 0;
        try (TopologyTestDriver driver = new TopologyTestDriver(topology, config)) {
            TestInputTopic<byte[], byte[]> in =
                    driver.createInputTopic("receipts", new ByteArraySerializer(), new ByteArraySerializer());
            TestOutputTopic<byte[], byte[]> out =
                    driver.createOutputTopic("projections", new ByteArrayDeserializer(), new ByteArrayDeserializer());
            TestOutputTopic<byte[], byte[]> dlq =
                    driver.createOutputTopic("dlq", new ByteArrayDeserializer(), new ByteArrayDeserializer());
            Instant timestamp = Instant.parse("2026-11-18T12:00:00Z");
            for (String line : Files.readAllLines(GOLDEN.resolve("receipts.jsonl"), StandardCharsets.UTF_8)) {
                if (line.isBlank()) continue;
                JsonNode r = JSON.readTree(line);
                // The driver numbers the records of partition 0 from 0, as the vectors do.
                assertEquals(records, r.get("offset").asLong(), "the vectors' offsets are 0, 1, 2, ...");
                records++;
                byte[] key = r.get("key").isNull() ? null : r.get("key").asText().getBytes(StandardCharsets.UTF_8);
                byte[] value = r.has("value_base64")
                        ? Base64.getDecoder().decode(r.get("value_base64").asText())
                        : r.get("value").isNull() ? null : r.get("value").asText().getBytes(StandardCharsets.UTF_8);
                in.pipeInput(new TestRecord<>(key, value, null, timestamp));
            }
            for (TestRecord<byte[], byte[]> p : out.readRecordsToList()) {
                JsonNode node = JSON.readTree(p.value());
                assertEquals(node.get("user_id").asText(), new String(p.key(), StandardCharsets.UTF_8), "key = user_id");
                projections.put(node.get("user_id").asText(), node);
            }
            for (TestRecord<byte[], byte[]> d : dlq.readRecordsToList()) {
                deadLetters.add(header(d, "mallquest.source.offset") + " " + header(d, "mallquest.reason"));
            }
        }
        assertEquals(records, counters.seen.get());

        Map<String, JsonNode> expected = new TreeMap<>();
        for (String line : Files.readAllLines(GOLDEN.resolve("expected-projections.jsonl"), StandardCharsets.UTF_8)) {
            if (line.isBlank()) continue;
            JsonNode e = JSON.readTree(line);
            expected.put(e.get("user_id").asText(), e);
        }
        assertEquals(expected.keySet(), projections.keySet(), "users with a projection");
        int fields = 0;
        for (Map.Entry<String, JsonNode> e : expected.entrySet()) {
            JsonNode want = e.getValue();
            JsonNode got = projections.get(e.getKey());
            for (Iterator<String> it = want.fieldNames(); it.hasNext(); ) {
                String field = it.next();
                assertTrue(got.has(field), e.getKey() + ": no " + field + " in " + got);
                if (field.endsWith("_at") && !want.get(field).isNull()) {
                    assertEquals(Instant.parse(want.get(field).asText()), Instant.parse(got.get(field).asText()),
                            e.getKey() + "." + field);
                } else {
                    assertEquals(want.get(field), got.get(field), e.getKey() + "." + field);
                }
                fields++;
            }
            // Nothing beyond the core fields the vectors describe.
            ObjectNode extra = ((ObjectNode) got.deepCopy()).remove(iterable(want.fieldNames()));
            assertEquals(0, extra.size(), e.getKey() + ": unexpected fields " + extra);
        }
        assertEquals(expected.size() * 12, fields, "12 fields per projection compared");

        List<String> expectedDlq = new ArrayList<>();
        for (String line : Files.readAllLines(GOLDEN.resolve("expected-dlq.jsonl"), StandardCharsets.UTF_8)) {
            if (line.isBlank()) continue;
            JsonNode d = JSON.readTree(line);
            expectedDlq.add(d.get("offset").asLong() + " " + d.get("reason").asText());
        }
        assertEquals(expectedDlq, deadLetters, "dead letters (offset reason), in order");
        assertEquals(expectedDlq.size(), counters.rejected.get());
    }

    /** Not in the vectors: the dedup window in event time (too_old), and redemptions, which this peer leaves out. */
    @Test
    void receiptsOlderThanTheWindowAreTooOldAndRedemptionsUnsupported(@TempDir Path stateDir) throws IOException {
        FoldTopology.Counters counters = new FoldTopology.Counters(Long.MAX_VALUE);
        var topology = FoldTopology.build("receipts", "projections", "dlq", new Rules(), counters);
        try (TopologyTestDriver driver = new TopologyTestDriver(topology,
                FoldTopology.config("window", "unused:9092", stateDir.toString(), 1))) {
            TestInputTopic<byte[], byte[]> in =
                    driver.createInputTopic("receipts", new ByteArraySerializer(), new ByteArraySerializer());
            TestOutputTopic<byte[], byte[]> out =
                    driver.createOutputTopic("projections", new ByteArrayDeserializer(), new ByteArrayDeserializer());
            TestOutputTopic<byte[], byte[]> dlq =
                    driver.createOutputTopic("dlq", new ByteArrayDeserializer(), new ByteArrayDeserializer());
            String[] values = {
                "{\"receipt_id\":\"r-1\",\"user_id\":\"u\",\"store_id\":\"s\",\"amount\":\"100.00\",\"issued_at\":\"2026-08-21T00:00:00Z\"}",
                "{\"receipt_id\":\"r-2\",\"user_id\":\"u\",\"store_id\":\"s\",\"amount\":\"10.00\",\"issued_at\":\"2026-11-18T00:00:00Z\"}",
                // 89 days after r-1's mark moved to r-2: r-1 is still in the window.
                "{\"receipt_id\":\"r-3\",\"user_id\":\"u\",\"store_id\":\"s\",\"amount\":\"50.00\",\"issued_at\":\"2026-11-18T00:00:01Z\",\"type\":\"refund\",\"refund_of\":\"r-1\"}",
                // 91 days before the mark.
                "{\"receipt_id\":\"r-4\",\"user_id\":\"u\",\"store_id\":\"s\",\"amount\":\"10.00\",\"issued_at\":\"2026-08-19T00:00:00Z\"}",
                "{\"receipt_id\":\"x-5\",\"user_id\":\"u\",\"store_id\":\"s\",\"type\":\"redemption\",\"coins\":5,\"issued_at\":\"2026-11-18T00:00:02Z\"}",
            };
            for (String v : values) {
                in.pipeInput(new TestRecord<>("u".getBytes(StandardCharsets.UTF_8), v.getBytes(StandardCharsets.UTF_8),
                        null, Instant.parse("2026-11-18T00:00:00Z")));
            }
            List<TestRecord<byte[], byte[]>> projections = out.readRecordsToList();
            assertEquals(3, projections.size());
            JsonNode last = JSON.readTree(projections.get(2).value());
            // r-1: 100 coins, 110 XP, level 2 (+50); r-2: 10 coins, 20 XP; r-3 gives back half of r-1.
            assertEquals(100 + 50 + 10 - 50, last.get("coins").asLong());
            assertEquals(110 + 20 - 55, last.get("xp").asLong());
            assertEquals(2, last.get("level").asInt());
            assertEquals("60.00", last.get("total_spent").asText());
            List<String> reasons = new ArrayList<>();
            for (TestRecord<byte[], byte[]> d : dlq.readRecordsToList()) reasons.add(header(d, "mallquest.reason"));
            assertEquals(List.of("too_old", "unsupported"), reasons);
        }
    }

    private static String header(TestRecord<byte[], byte[]> r, String name) {
        Header h = r.headers().lastHeader(name);
        assertNotNull(h, "header " + name);
        return new String(h.value(), StandardCharsets.UTF_8);
    }

    private static List<String> iterable(Iterator<String> it) {
        List<String> out = new ArrayList<>();
        it.forEachRemaining(out::add);
        return out;
    }
}
