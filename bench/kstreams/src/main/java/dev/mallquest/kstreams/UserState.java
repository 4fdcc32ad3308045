package dev.mallquest.kstreams;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import com.fasterxml.jackson.core.JsonEncoding;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;

/** One user's projection: the core fields of mallquest's {@code UserState}. */
public final class UserState {
    public String userId;
    public long coins;
    public long xp;
    public int level = 1;
    /** Purchases less refunds, minor units. */
    public long totalSpent;
    public long receiptCount;
    public long refundCount;
    /** Distinct store_ids of purchases, sorted. */
    public List<String> stores = new ArrayList<>();
    public Instant9 firstReceiptAt;
    public Instant9 lastReceiptAt;
    /** Applied receipts of every kind. */
    public long version;
    public int sourcePartition = -1;
    public long sourceOffset = -1;

    public UserState(String userId) {
        this.userId = userId;
    }

    /** Adds a store to the sorted set. */
    void addStore(String storeId) {
        int at = Collections.binarySearch(stores, storeId);
        if (at < 0) stores.add(-at - 1, storeId);
    }

    // ---- the projection JSON (src/codec.rs ProjectionJson, core fields only) ----

    private static final JsonFactory JSON = new JsonFactory();

    public byte[] toJson() {
        ByteArrayOutputStream out = new ByteArrayOutputStream(256);
        try (JsonGenerator g = JSON.createGenerator(out, JsonEncoding.UTF8)) {
            g.writeStartObject();
            g.writeStringField("user_id", userId);
            g.writeNumberField("coins", coins);
            g.writeNumberField("xp", xp);
            g.writeNumberField("level", level);
            g.writeStringField("total_spent", formatMinor(totalSpent));
            g.writeNumberField("receipt_count", receiptCount);
            g.writeNumberField("refund_count", refundCount);
            g.writeNumberField("stores_visited", stores.size());
            writeInstant(g, "first_receipt_at", firstReceiptAt);
            writeInstant(g, "last_receipt_at", lastReceiptAt);
            g.writeNumberField("version", version);
            if (sourcePartition < 0) {
                g.writeNullField("source");
            } else {
                g.writeObjectFieldStart("source");
                g.writeNumberField("partition", sourcePartition);
                g.writeNumberField("offset", sourceOffset);
                g.writeEndObject();
            }
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }

    private static void writeInstant(JsonGenerator g, String name, Instant9 t) throws IOException {
        if (t == null) g.writeNullField(name);
        else g.writeStringField(name, t.toRfc3339());
    }

    /** {@code 12345} -> {@code "123.45"}. */
    public static String formatMinor(long minor) {
        String sign = minor < 0 ? "-" : "";
        long abs = Math.abs(minor);
        long cents = abs % 100;
        return sign + (abs / 100) + "." + (cents < 10 ? "0" : "") + cents;
    }

    // ---- the state store's format: compact binary ----

    public static final Serde<UserState> SERDE = Serdes.serdeFrom(new Ser(), new De());

    static final class Ser implements Serializer<UserState> {
        @Override
        public byte[] serialize(String topic, UserState s) {
            if (s == null) return null;
            byte[] id = s.userId.getBytes(StandardCharsets.UTF_8);
            int size = 4 + id.length + 8 * 6 + 4 + 4 + 8 + 2 * 13 + 4;
            byte[][] stores = new byte[s.stores.size()][];
            for (int i = 0; i < stores.length; i++) {
                stores[i] = s.stores.get(i).getBytes(StandardCharsets.UTF_8);
                size += 4 + stores[i].length;
            }
            ByteBuffer b = ByteBuffer.allocate(size);
            putBytes(b, id);
            b.putLong(s.coins).putLong(s.xp).putInt(s.level).putLong(s.totalSpent)
                    .putLong(s.receiptCount).putLong(s.refundCount).putLong(s.version)
                    .putInt(s.sourcePartition).putLong(s.sourceOffset);
            putInstant(b, s.firstReceiptAt);
            putInstant(b, s.lastReceiptAt);
            b.putInt(stores.length);
            for (byte[] st : stores) putBytes(b, st);
            return b.array();
        }
    }

    static final class De implements Deserializer<UserState> {
        @Override
        public UserState deserialize(String topic, byte[] data) {
            if (data == null) return null;
            ByteBuffer b = ByteBuffer.wrap(data);
            UserState s = new UserState(getString(b));
            s.coins = b.getLong();
            s.xp = b.getLong();
            s.level = b.getInt();
            s.totalSpent = b.getLong();
            s.receiptCount = b.getLong();
            s.refundCount = b.getLong();
            s.version = b.getLong();
            s.sourcePartition = b.getInt();
            s.sourceOffset = b.getLong();
            s.firstReceiptAt = getInstant(b);
            s.lastReceiptAt = getInstant(b);
            int n = b.getInt();
            s.stores = new ArrayList<>(n + 1);
            for (int i = 0; i < n; i++) s.stores.add(getString(b));
            return s;
        }
    }

    static void putBytes(ByteBuffer b, byte[] v) {
        b.putInt(v.length).put(v);
    }

    static String getString(ByteBuffer b) {
        int n = b.getInt();
        String s = new String(b.array(), b.arrayOffset() + b.position(), n, StandardCharsets.UTF_8);
        b.position(b.position() + n);
        return s;
    }

    /** 13 bytes: a presence flag, seconds, nanoseconds. */
    static void putInstant(ByteBuffer b, Instant9 t) {
        if (t == null) {
            b.put((byte) 0).putLong(0).putInt(0);
        } else {
            b.put((byte) 1).putLong(t.secs).putInt(t.nanos);
        }
    }

    static Instant9 getInstant(ByteBuffer b) {
        boolean present = b.get() != 0;
        long secs = b.getLong();
        int nanos = b.getInt();
        return present ? new Instant9(secs, nanos) : null;
    }
}
