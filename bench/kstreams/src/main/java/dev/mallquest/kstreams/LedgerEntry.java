package dev.mallquest.kstreams;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Objects;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * What the ledger remembers of one applied receipt (mallquest's {@code LedgerEntry}, without
 * campaigns): enough to recognise a duplicate and to reverse a purchase proportionally.
 */
public final class LedgerEntry {
    public final Receipt.Kind kind;
    /** A refund's original; null for a purchase. */
    public final String refundOf;
    public final String storeId;
    public final long amount;
    public final Instant9 issuedAt;
    /** Coins the purchase earned by the base rules, level bonus excluded (0 otherwise). */
    public final long earnedCoins;
    /** XP the purchase earned (0 otherwise). */
    public final long earnedXp;
    /** Amount refunded so far (purchases). */
    public long refunded;

    public LedgerEntry(Receipt.Kind kind, String refundOf, String storeId, long amount, Instant9 issuedAt,
                       long earnedCoins, long earnedXp, long refunded) {
        this.kind = kind;
        this.refundOf = refundOf;
        this.storeId = storeId;
        this.amount = amount;
        this.issuedAt = issuedAt;
        this.earnedCoins = earnedCoins;
        this.earnedXp = earnedXp;
        this.refunded = refunded;
    }

    /** The same receipt again (mallquest's {@code same_receipt}): kind (with its original), store, amount, instant. */
    public boolean sameReceipt(Receipt r) {
        return kind == r.kind && Objects.equals(refundOf, r.refundOf) && storeId.equals(r.storeId)
                && amount == r.amount && issuedAt.equals(r.issuedAt);
    }

    /** The ledger store's key: ids hold no control character, so NUL separates them. */
    public static String key(String userId, String receiptId) {
        return userId + '\u0000' + receiptId;
    }

    public static final Serde<LedgerEntry> SERDE = Serdes.serdeFrom(new Ser(), new De());

    static final class Ser implements Serializer<LedgerEntry> {
        @Override
        public byte[] serialize(String topic, LedgerEntry e) {
            if (e == null) return null;
            byte[] store = e.storeId.getBytes(StandardCharsets.UTF_8);
            byte[] of = e.refundOf == null ? null : e.refundOf.getBytes(StandardCharsets.UTF_8);
            ByteBuffer b = ByteBuffer.allocate(1 + 4 + (of == null ? 0 : of.length) + 4 + store.length + 8 + 13 + 8 * 3);
            b.put((byte) e.kind.ordinal());
            if (of == null) b.putInt(-1);
            else UserState.putBytes(b, of);
            UserState.putBytes(b, store);
            b.putLong(e.amount);
            UserState.putInstant(b, e.issuedAt);
            b.putLong(e.earnedCoins).putLong(e.earnedXp).putLong(e.refunded);
            return b.array();
        }
    }

    static final class De implements Deserializer<LedgerEntry> {
        private static final Receipt.Kind[] KINDS = Receipt.Kind.values();

        @Override
        public LedgerEntry deserialize(String topic, byte[] data) {
            if (data == null) return null;
            ByteBuffer b = ByteBuffer.wrap(data);
            Receipt.Kind kind = KINDS[b.get()];
            String of = null;
            int n = b.getInt(b.position());
            if (n < 0) b.getInt();
            else of = UserState.getString(b);
            String store = UserState.getString(b);
            long amount = b.getLong();
            Instant9 at = UserState.getInstant(b);
            return new LedgerEntry(kind, of, store, amount, at, b.getLong(), b.getLong(), b.getLong());
        }
    }
}
