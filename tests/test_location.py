"""pipeline.location: how a URL is reached, resolved in one place."""

import pickle

from pipeline.location import FROM_ENVIRONMENT, Location, Reach


def test_the_endpoint_applies_to_s3_urls_only_and_travels_with_every_url_reached_from_one():
    reach = Reach.of("http://127.0.0.1:9000")
    shard = reach.at("s3://b/in/a.tar")
    assert shard.options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert shard.at("https://images.example/a.jpg").options == {}  # a manifest's web image: no S3 endpoint
    assert shard.at("s3a://b/x.jpg").reach == reach and shard.at("s3a://b/x.jpg").options == shard.options
    assert Reach.of("") == FROM_ENVIRONMENT and FROM_ENVIRONMENT.at("s3://b/a.tar").options == {}
    assert pickle.loads(pickle.dumps(shard)) == shard  # a Ray task gets the same location


def test_a_local_path_is_a_path_absolute_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "a::b.txt"  # '::' would chain filesystems if parsed as a URL
    odd.write_text("x")
    fs, path = Location(f"file://{odd}").fs()
    assert path == str(odd) and fs.cat_file(path) == b"x"
    assert Location("a::b.txt").absolute.url == str(odd)
    with Location("a::b.txt").open() as f:
        assert f.read() == b"x"
