package dev.mallquest.kstreams;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Folds each receipt into its user's state (the {@code users} store), checking duplicates
 * and refunds against the {@code ledger} store; forwards the changed projection to the
 * projections sink and each rejected record, unchanged, to the DLQ sink with mallquest's
 * reason headers. One instance per task (input partition).
 */
public final class FoldProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    private final Rules rules;
    private final FoldTopology.Counters counters;
    private final ReceiptCodec codec;
    private ProcessorContext<byte[], byte[]> context;
    private KeyValueStore<String, UserState> users;
    private KeyValueStore<String, LedgerEntry> ledger;
    private KeyValueStore<Integer, Long> marks;
    /** This partition's event-time mark (seconds): the newest applied issued_at, bounded by the record timestamp + 1 day. */
    private Long mark;
    private int partition;

    FoldProcessor(Rules rules, FoldTopology.Counters counters) {
        this.rules = rules;
        this.counters = counters;
        this.codec = new ReceiptCodec(rules);
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        this.context = context;
        this.users = context.getStateStore(FoldTopology.USERS);
        this.ledger = context.getStateStore(FoldTopology.LEDGER);
        this.marks = context.getStateStore(FoldTopology.MARKS);
        this.partition = context.taskId().partition();
        this.mark = marks.get(partition);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        try {
            fold(record);
        } catch (Reject.Rejected r) {
            counters.rejected.incrementAndGet();
            deadLetter(record, r.reject);
        }
        counters.seen();
    }

    private void fold(Record<byte[], byte[]> record) throws Reject.Rejected {
        Receipt r = codec.decode(record.key(), record.value());
        // Event time decides, never the wall clock (mallquest's dedup window): a receipt older
        // than the window is too_old, and ledger entries past it count as absent.
        Long cutoff = mark == null ? null : mark - rules.dedupWindowSecs;
        if (cutoff != null && r.issuedAt.secs < cutoff) throw Reject.TOO_OLD.error;
        LedgerEntry existing = live(ledger.get(LedgerEntry.key(r.userId, r.receiptId)), cutoff);
        LedgerEntry original = r.refundOf == null ? null : live(ledger.get(LedgerEntry.key(r.userId, r.refundOf)), cutoff);
        UserState state = users.get(r.userId);
        if (state == null) state = new UserState(r.userId);
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        Fold.Effect effect = Fold.apply(state, existing, original, r, meta.partition(), meta.offset(), rules);
        if (effect == Fold.Effect.DUPLICATE) {
            counters.duplicates.incrementAndGet();
            return;
        }
        counters.applied.incrementAndGet();
        counters.levelUps.addAndGet(effect.levelsGained);
        long at = Math.min(r.issuedAt.secs, Math.floorDiv(record.timestamp(), 1000L) + 86_400);
        if (mark == null || at > mark) {
            mark = at;
            marks.put(partition, at);
        }
        users.put(r.userId, state);
        if (effect.original != null) ledger.put(LedgerEntry.key(r.userId, r.refundOf), effect.original);
        ledger.put(LedgerEntry.key(r.userId, r.receiptId), effect.entry);
        context.forward(new Record<>(record.key(), state.toJson(), record.timestamp()), FoldTopology.PROJECTIONS_SINK);
    }

    private static LedgerEntry live(LedgerEntry e, Long cutoff) {
        return e == null || (cutoff != null && e.issuedAt.secs < cutoff) ? null : e;
    }

    /** The original key and bytes, with mallquest's DLQ headers (schemas/dlq-headers.md). */
    private void deadLetter(Record<byte[], byte[]> record, Reject reason) {
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        RecordHeaders headers = new RecordHeaders();
        headers.add("mallquest.reason", reason.reason.getBytes(StandardCharsets.UTF_8));
        headers.add("mallquest.source.topic", meta.topic().getBytes(StandardCharsets.UTF_8));
        headers.add("mallquest.source.partition", Integer.toString(meta.partition()).getBytes(StandardCharsets.UTF_8));
        headers.add("mallquest.source.offset", Long.toString(meta.offset()).getBytes(StandardCharsets.UTF_8));
        context.forward(new Record<>(record.key(), record.value(), record.timestamp(), headers), FoldTopology.DLQ_SINK);
    }
}
