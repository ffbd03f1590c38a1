// Reads a JSON array of Kubernetes objects on stdin; checks each Strimzi and
// prometheus-operator object against its CRD's OpenAPI schema (kubernetes-models compiles
// the published CRDs into validators); prints a JSON array of
// {apiVersion, kind, name, error} (error null when valid). An object of another group is
// reported with error "no schema", so that nothing passes unchecked by mistake.
const PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const objects = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const result = { apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata?.name, error: null };
  const pkg = PACKAGES[group];
  if (pkg === undefined) {
    result.error = "no schema";
  } else {
    try {
      const module = await import(`${pkg}/${group}/${version}/${obj.kind}`);
      new module[obj.kind](obj).validate();
    } catch (err) {
      result.error = String(err.message ?? err);
    }
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
