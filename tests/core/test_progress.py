from saecircuits.core.progress import TokenBar


def test_bar_counts_tokens_and_rate_from_where_it_resumed():
    bar = TokenBar("t", total=100, done=10)
    try:
        bar.advance(20, info="EV 0.5")
        assert bar.completed == 30
        fields = bar.p.tasks[0].fields
        assert fields["rate"].endswith("tok/s") and fields["info"] == "EV 0.5"
        assert bar.p.tasks[0].completed == 30
        bar.update(40)
        assert bar.p.tasks[0].completed == 40 and bar.p.tasks[0].fields["info"] == "EV 0.5"  # info kept
    finally:
        bar.close()


def test_disabled_bar_does_nothing():
    with TokenBar("t", total=100, enabled=False) as bar:
        bar.advance(5)
        bar.update(50, info="x")
        assert bar.p is None and not bar.enabled
